"""Checkpoint integrity and retention on plain files: what counts as complete, what is skipped."""

from __future__ import annotations

import json

import numpy as np

from orchestrator.data.loader import ShardedBatches
from orchestrator.data.shards import TokenBlocks
from orchestrator.rundir import RunDir
from orchestrator.rundir import checkpoints as checkpoint


def _write(root, step: int, sealed: bool = True):
    path = root / checkpoint.tag_for(step)
    path.mkdir(parents=True)
    for rank in range(2):
        (path / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(b"x" * (100 + rank))
    if sealed:
        files = checkpoint.files_of(path)
        digests = {}
        for rank in range(2):  # as the ranks do it: each hashes its share
            digests.update(checkpoint.sha256(path, checkpoint.share(files, rank, 2)))
        checkpoint.seal(path, {"step": step, "world_size": 2}, digests)
    return path


def test_a_sealed_checkpoint_is_complete_and_becomes_latest(tmp_path):
    path = _write(tmp_path, 5)
    assert checkpoint.problem(path) is None
    assert (tmp_path / "latest").read_text() == "step_00000005"
    found, skipped = checkpoint.newest_usable(tmp_path)
    assert (found.step, found.world_size, skipped) == (5, 2, [])


def test_truncated_missing_or_unmarked_checkpoints_are_skipped_with_a_reason(tmp_path):
    _write(tmp_path, 5)
    truncated = _write(tmp_path, 10)
    (truncated / "zero_pp_rank_1_optim_states.pt").write_bytes(b"x")
    missing = _write(tmp_path, 15)
    (missing / "zero_pp_rank_0_optim_states.pt").unlink()
    _write(tmp_path, 20, sealed=False)
    found, skipped = checkpoint.newest_usable(tmp_path)
    assert found.step == 5
    reasons = {path.name: reason for path, reason in skipped}
    assert "no completion marker" in reasons["step_00000020"]
    assert "missing" in reasons["step_00000015"]
    assert "truncated" in reasons["step_00000010"] and "1 of 101 bytes" in reasons["step_00000010"]


def test_a_flipped_byte_of_the_same_size_is_found_by_its_hash_and_names_the_file(tmp_path):
    _write(tmp_path, 5)
    flipped = _write(tmp_path, 10)
    shard = flipped / "zero_pp_rank_1_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[50] ^= 0x01
    shard.write_bytes(bytes(data))
    assert checkpoint.problem(flipped) is None  # sizes alone cannot tell
    found, skipped = checkpoint.newest_usable(tmp_path)
    assert found.step == 5
    assert skipped[0][0] == flipped and "zero_pp_rank_1_optim_states.pt does not match its sha256" in skipped[0][1]
    # a checkpoint this command verified already is not hashed again
    assert checkpoint.newest_usable(tmp_path, trusted=flipped)[0].step == 10


def test_hash_shares_cover_every_file_once_and_balance_the_bytes():
    files = {"a": 100, "b": 90, "c": 50, "d": 40, "e": 10}
    shares = [checkpoint.share(files, rank, 2) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(files)
    assert [sum(files[name] for name in share) for share in shares] == [150, 140]


def test_retention_keeps_the_newest_complete_ones_and_never_the_last_complete(tmp_path):
    for step in (5, 10, 15, 20):
        _write(tmp_path, step)
    _write(tmp_path, 25, sealed=False)  # newer but broken: not counted as a kept checkpoint
    checkpoint.retain(tmp_path, keep=2)
    assert sorted(p.name for p in checkpoint.candidates(tmp_path)) == ["step_00000015", "step_00000020",
                                                                      "step_00000025"]
    checkpoint.retain(tmp_path, keep=0)  # even a keep of 0 leaves the newest complete one
    assert checkpoint.newest_usable(tmp_path)[0].step == 20


def test_resuming_mid_second_epoch_consumes_the_same_samples_as_an_uninterrupted_run():
    blocks = TokenBlocks(np.arange(40, dtype=np.uint16).reshape(40, 1), np.arange(40))  # sample id = value
    for rank in range(2):
        straight = ShardedBatches([blocks], [1.0], 3, rank, 2, seed=7)
        per_epoch = 40 // 6
        total = 2 * per_epoch + 4
        expected = [int(v) for _ in range(total) for v in straight.next()[:, 0]]

        first = ShardedBatches([blocks], [1.0], 3, rank, 2, seed=7)
        consumed = [int(v) for _ in range(per_epoch + 2) for v in first.next()[:, 0]]  # into epoch 2
        state = json.loads(json.dumps(first.state()))  # as it travels through a checkpoint
        resumed = ShardedBatches([blocks], [1.0], 3, rank, 2, seed=7)
        resumed.restore(state)
        consumed += [int(v) for _ in range(total - per_epoch - 2) for v in resumed.next()[:, 0]]
        assert consumed == expected


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    run = RunDir(tmp_path)
    path = run.metrics
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 18)))
    run.truncate_metrics(15)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(1, 16))


def test_a_rewrite_that_fails_for_lack_of_space_leaves_the_old_file_whole_and_no_partial_copy(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    import pytest

    run = RunDir(tmp_path)
    before = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 18))
    run.metrics.write_text(before)
    real_write = Path.write_text

    def full_disk(path, text, *args, **kwargs):
        real_write(path, text[: len(text) // 2])  # a partial copy, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        run.truncate_metrics(15)
    monkeypatch.undo()
    assert run.metrics.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.metrics.name]
