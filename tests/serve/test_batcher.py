"""serve.batcher: batches start when the model is free, and close at a text or token budget."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from serve.batcher import ContinuousBatcher


class Model:
    """Upper-cases texts; records each batch; can be held busy until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(texts)
        self.started.set()
        self.release.wait(10)
        if "boom" in texts:
            raise ValueError("model failed")
        return [t.upper() for t in texts]


def words(text: str) -> int:
    return len(text.split())


async def busy_then(model: Model, batcher: ContinuousBatcher, first: str, then: list[str], cancel: str = "") -> list[Any]:
    """Submit ``first``; while the model holds it, submit ``then`` (and cancel the call for
    ``cancel``); release; every result or error."""
    model.release.clear()
    head = asyncio.create_task(batcher(first))
    await asyncio.to_thread(model.started.wait, 10)
    rest = {t: asyncio.create_task(batcher(t)) for t in then}
    await asyncio.sleep(0.05)  # they are all queued behind the running batch
    if cancel:
        rest.pop(cancel).cancel()
    model.release.set()
    return await asyncio.gather(head, *rest.values(), return_exceptions=True)


def test_a_text_alone_runs_at_once():
    model = Model()
    assert asyncio.run(ContinuousBatcher(model)("fine")) == "FINE"
    assert model.batches == [["fine"]]


def test_texts_that_arrive_while_the_model_computes_form_the_next_batch_in_order():
    model = Model()
    texts = [f"t{i}" for i in range(6)]
    assert asyncio.run(busy_then(model, ContinuousBatcher(model), "first", texts)) == ["FIRST"] + [t.upper() for t in texts]
    assert model.batches == [["first"], texts]


def test_each_batch_is_observed_with_its_results_waits_tokens_and_time_in_the_model():
    model = Model()
    seen: list[tuple[list[str], list[float], int, float]] = []
    texts = ["two words", "three words here", "one"]
    batcher = ContinuousBatcher(model, tokens=words, observe=lambda *batch: seen.append(batch))
    asyncio.run(busy_then(model, batcher, "first", texts))
    assert [r for r, *_ in seen] == [["FIRST"], [t.upper() for t in texts]]
    first_wait, later_waits = seen[0][1], seen[1][1]
    assert first_wait[0] < 0.05 and all(w >= 0.05 for w in later_waits)  # queued behind the held batch (>= 50 ms)
    assert [tokens for _, _, tokens, _ in seen] == [1, 6]
    assert seen[0][3] >= 0.05 > seen[1][3] >= 0  # the first batch was held in the model >= 50 ms, the second not


def test_a_batch_closes_at_max_texts():
    model = Model()
    texts = [f"t{i}" for i in range(7)]
    asyncio.run(busy_then(model, ContinuousBatcher(model, max_texts=3), "first", texts))
    assert [len(b) for b in model.batches] == [1, 3, 3, 1]


def test_a_batch_closes_at_the_padded_token_budget():
    model = Model()
    short, long = "w " * 5, "w " * 40
    batcher = ContinuousBatcher(model, tokens=words, max_texts=32, max_tokens=40)
    asyncio.run(busy_then(model, batcher, "first", [short] * 8 + [long, short]))
    # 8 x 5 = 40 tokens fill a batch; the long review then pads alone (2 x 40 > 40); the last short one after it
    assert [len(b) for b in model.batches] == [1, 8, 1, 1] and model.batches[2] == [long]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs():
    model = Model()
    batcher = ContinuousBatcher(model)

    async def scenario():
        return await busy_then(model, batcher, "first", ["a", "boom"]), await batcher("after")

    (first, a, boom), after = asyncio.run(scenario())
    assert first == "FIRST" and after == "AFTER"
    assert isinstance(a, ValueError) and isinstance(boom, ValueError) and str(a) == "model failed"


def test_a_caller_that_went_away_costs_no_computation():
    model = Model()
    assert asyncio.run(busy_then(model, ContinuousBatcher(model), "first", ["gone", "kept"], cancel="gone")) == ["FIRST", "KEPT"]
    assert model.batches == [["first"], ["kept"]]


def test_a_wait_lets_a_burst_fill_one_batch():
    model = Model()

    async def burst():
        batcher = ContinuousBatcher(model, wait_s=0.2)
        first = asyncio.create_task(batcher("a"))
        await asyncio.sleep(0.02)
        return await asyncio.gather(first, batcher("b"), batcher("c"))

    assert asyncio.run(burst()) == ["A", "B", "C"]
    assert model.batches == [["a", "b", "c"]]


@pytest.mark.parametrize("max_tokens", [None, 10])
def test_one_text_over_the_token_budget_still_runs_alone(max_tokens):
    model = Model()
    assert asyncio.run(ContinuousBatcher(model, tokens=words, max_tokens=max_tokens)("w " * 50)) == ("W " * 50)
