"""serve.deployment's token budget (tests/test_serve.py serves with a tight one: 2 long reviews a batch)."""

from __future__ import annotations

from serve.deployment import TokenBudget


def budget(max_texts: int, max_tokens: int | None) -> TokenBudget:
    b = TokenBudget(max_texts, max_tokens)
    b.tokens = lambda text: len(text.split())
    return b


def test_size_counts_texts_or_padded_tokens_whichever_is_larger():
    b = budget(32, 4096)
    short, long = "w " * 20, "w " * 512
    assert b([short] * 32) == 32  # 32 x 20 tokens: the text count decides
    assert b([long] * 8) == 32 and b([long] * 9) == 36  # 8 long reviews fill the token budget
    assert b([long] + [short] * 31) == 128  # one long review pads 31 short ones: over budget
    assert budget(32, None)([long] * 32) == 32  # no token budget: texts only
