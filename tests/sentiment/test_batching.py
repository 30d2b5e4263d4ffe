import numpy as np

from sentiment.batching import eval_batches, iterate, make_collator, train_batches
from sentiment.model import load_tokenizer

RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(10, 512, size=1003).tolist()


def _plan(**kw):
    args = dict(seed=1, epoch=0, world_size=2)
    args.update(kw)
    return [train_batches(LENGTHS, 8, rank=r, **args) for r in range(args["world_size"])]


def test_ranks_get_disjoint_shards_of_equal_size():
    plans = _plan(world_size=3)
    flat = [[i for b in plan for i in b] for plan in plans]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) > 0
    assert sum(len(f) for f in flat) == len(set().union(*map(set, flat)))  # no index twice
    assert all(len(b) == 8 for plan in plans for b in plan)


def test_plan_is_deterministic_and_changes_with_epoch():
    assert _plan() == _plan()
    assert _plan() != _plan(epoch=1)


def test_step_count_is_a_multiple_of_accumulation():
    for plan in _plan(multiple_of=5):
        assert len(plan) % 5 == 0


def _padding_waste(plans):
    batches = [b for plan in plans for b in plan]
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)
    real = sum(LENGTHS[i] for b in batches for i in b)
    return padded / real


def test_length_grouping_cuts_padding():
    grouped = _padding_waste(_plan(group_by_length=True))
    random = _padding_waste(_plan(group_by_length=False))
    assert grouped < 1.1 < 1.5 < random


def test_longest_batch_comes_first_on_some_rank():
    plans = _plan(world_size=1)
    first = max(LENGTHS[i] for i in plans[0][0])
    assert first == max(LENGTHS[i] for b in plans[0] for i in b)


def test_eval_batches_cover_every_example_once():
    shards = [eval_batches(LENGTHS, 16, rank=r, world_size=3) for r in range(3)]
    seen = sorted(i for s in shards for b in s for i in b)
    assert seen == list(range(len(LENGTHS)))


def test_collator_pads_to_multiple_with_mask(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    inputs = [[101, 5, 6, 102], [101, 7, 102], list(range(101, 111))]
    [(idx, batch)] = list(iterate(inputs, np.array([1, 0, 1]), [[0, 1, 2]], make_collator(tok, 8)))
    assert batch["input_ids"].shape == (3, 16) and idx == [0, 1, 2]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3, 10]
    assert batch["input_ids"][1, 3:].eq(tok.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0, 1]


def test_workers_split_the_same_global_batches_as_one_worker():
    one = train_batches(LENGTHS, 16, seed=3, epoch=2)
    two = [train_batches(LENGTHS, 8, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(b) for b in one]


def test_ranks_get_similar_lengths_in_a_step():
    r0, r1 = (train_batches(LENGTHS, 8, seed=1, epoch=0, rank=r, world_size=2) for r in range(2))
    for a, b in zip(r0, r1):
        assert abs(max(LENGTHS[i] for i in a) - max(LENGTHS[i] for i in b)) <= 0.1 * max(LENGTHS[i] for i in a)
