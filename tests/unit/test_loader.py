"""Each rank reads a disjoint, seeded slice of one global order; sources reshuffle when they run out;
a mixture draws its sources with their weights; the position is resumable at any world size."""

import json

import numpy as np

from orchestrator.data.loader import ShardedBatches, eval_batches
from orchestrator.data.shards import TokenBlocks


def _blocks(n: int, first: int = 0) -> TokenBlocks:
    """Block i holds the value first + i in each of its 4 tokens."""
    return TokenBlocks(np.arange(first, first + n, dtype=np.uint16).repeat(4).reshape(n, 4), np.arange(n))


def _loader(rank: int, world: int, seed: int = 0, n: int = 20, batch: int = 2) -> ShardedBatches:
    return ShardedBatches([_blocks(n)], [1.0], batch, rank, world, seed)


def _values(loader: ShardedBatches, steps: int) -> list[int]:
    return [int(v) for _ in range(steps) for v in loader.next()[:, 0]]


def test_ranks_see_disjoint_slices_covering_the_data_each_pass():
    a, b = _values(_loader(0, 2), 5), _values(_loader(1, 2), 5)  # 5 steps x 2 ranks x 2 = the 20 blocks
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(20))


def test_same_seed_same_order_other_seed_other_order():
    assert _values(_loader(0, 2, seed=1), 5) == _values(_loader(0, 2, seed=1), 5)
    assert _values(_loader(0, 2, seed=1), 5) != _values(_loader(0, 2, seed=2), 5)


def test_the_next_pass_reshuffles_and_the_state_counts_samples():
    loader = _loader(0, 1, n=20, batch=4)
    first = _values(loader, 5)
    assert loader.state() == {"samples": 20, "sources": [20]}
    second = _values(loader, 5)
    assert sorted(first) == sorted(second) == list(range(20)) and first != second


def _step_samples(loaders: list[ShardedBatches], accum: int) -> set[int]:
    """The samples one optimizer step sees: every rank's micro-batches of it."""
    return {int(v) for loader in loaders for _ in range(accum) for v in loader.next()[:, 0]}


def _mixture(rank: int, world: int, seed: int = 3) -> ShardedBatches:
    return ShardedBatches([_blocks(21), _blocks(9, first=100)], [0.75, 0.25], 2, rank, world, seed)


def test_a_world_size_change_continues_at_the_next_unseen_sample_with_the_same_global_batches():
    for make in (lambda rank, world: ShardedBatches([_blocks(21)], [1.0], 2, rank, world, 3), _mixture):
        two = [make(rank, 2) for rank in range(2)]
        straight = [_step_samples(two, accum=1) for _ in range(12)]  # past the end of every source

        before = [make(rank, 2) for rank in range(2)]
        seen = [_step_samples(before, accum=1) for _ in range(7)]
        state = json.loads(json.dumps(before[1].state()))  # as it travels through a checkpoint
        assert before[0].state() == state  # one global position, the same on every rank
        one = make(0, 1)
        one.restore(state)
        seen += [_step_samples([one], accum=2) for _ in range(5)]  # 1 worker, grad_accum 2: same global batch
        assert seen == straight


def test_a_mixture_draws_each_source_with_its_weight():
    loader = ShardedBatches([_blocks(50), _blocks(50, first=100)], [3.0, 1.0], 8, 0, 1, seed=0)
    values = _values(loader, 200)
    share = sum(v < 100 for v in values) / len(values)
    assert abs(share - 0.75) < 0.03
    assert loader.state()["sources"][0] == sum(v < 100 for v in values)


def test_a_position_derived_from_the_step_matches_the_loaders_own():
    for loader in (_loader(0, 2, n=21), _mixture(0, 2)):
        for _ in range(13):
            loader.next()
        assert loader.position_after(13) == loader.state()


def test_eval_batches_are_equal_in_number_on_every_rank():
    counts = [len(list(eval_batches(_blocks(7), 2, rank, 2, limit=10))) for rank in range(2)]
    assert counts[0] == counts[1] == 2
