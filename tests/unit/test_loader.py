"""Each rank reads a disjoint, seeded shard; epochs reshuffle; the position is resumable."""

import torch

from orchestrator.data.loader import ShardedBatches, eval_batches


def _blocks(n: int) -> torch.Tensor:
    return torch.arange(n).unsqueeze(1).repeat(1, 4)  # block i holds the value i


def _epoch(rank: int, world: int, seed: int = 0) -> list[int]:
    loader = ShardedBatches(_blocks(20), batch_size=2, rank=rank, world_size=world, seed=seed)
    return [int(v) for _ in range(loader.batches_per_epoch) for v in loader.next()[:, 0]]


def test_ranks_see_disjoint_shards_covering_the_data():
    a, b = _epoch(0, 2), _epoch(1, 2)
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(20))


def test_same_seed_same_order_other_seed_other_order():
    assert _epoch(0, 2, seed=1) == _epoch(0, 2, seed=1)
    assert _epoch(0, 2, seed=1) != _epoch(0, 2, seed=2)


def test_next_epoch_reshuffles_and_state_tracks_position():
    loader = ShardedBatches(_blocks(20), batch_size=2, rank=0, world_size=2, seed=0)
    first = [loader.next() for _ in range(loader.batches_per_epoch)]
    assert loader.state() == {"epoch": 0, "samples": 20}
    second = [loader.next() for _ in range(loader.batches_per_epoch)]
    assert loader.state() == {"epoch": 1, "samples": 20}
    assert not all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def _step_samples(loaders: list[ShardedBatches], accum: int) -> set[int]:
    """The samples one optimizer step sees: every rank's micro-batches of it."""
    return {int(v) for loader in loaders for _ in range(accum) for v in loader.next()[:, 0]}


def test_a_world_size_change_continues_at_the_next_unseen_sample_with_the_same_global_batches():
    blocks = _blocks(21)  # an odd count: each epoch leaves a tail for the next reshuffle
    two = [ShardedBatches(blocks, 2, rank, 2, seed=3) for rank in range(2)]
    straight = [_step_samples(two, accum=1) for _ in range(12)]  # 5 steps per epoch: into the third

    before = [ShardedBatches(blocks, 2, rank, 2, seed=3) for rank in range(2)]
    seen = [_step_samples(before, accum=1) for _ in range(7)]  # into the second epoch
    state = before[1].state()
    assert before[0].state() == state  # one global position, the same on every rank
    one = ShardedBatches(blocks, 2, 0, 1, seed=3)
    one.restore(state)
    seen += [_step_samples([one], accum=2) for _ in range(5)]  # 1 worker, grad_accum 2: same global batch
    assert seen == straight


def test_a_position_derived_from_the_step_matches_the_loaders_own():
    loader = ShardedBatches(_blocks(21), batch_size=2, rank=0, world_size=2, seed=0)
    for _ in range(13):
        loader.next()
    assert loader.position_after(13) == loader.state()


def test_eval_batches_are_equal_in_number_on_every_rank():
    counts = [len(list(eval_batches(_blocks(7), 2, rank, 2, limit=10))) for rank in range(2)]
    assert counts[0] == counts[1] == 2
