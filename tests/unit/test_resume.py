"""The resume policy without Ray or DeepSpeed: which checkpoint a command continues from, what it refuses,
and the global batch kept on a new world size. Checkpoints are fakes on plain files, sealed as the ranks
seal them; config.yaml is what the driver writes (the resolved config)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.config.compose import to_yaml
from orchestrator.errors import ConfigError
from orchestrator.plan.job import keep_global_batch, resolve
from orchestrator.rundir import RunDir, checkpoints
from orchestrator.train import resume


def _checkpoint(root, step: int, world: int = 2, global_batch: int = 16, zero_stage: int = 2, sealed: bool = True):
    path = root / checkpoints.tag_for(step)
    path.mkdir(parents=True)
    for rank in range(world):
        (path / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(b"x" * (100 + rank))
    if sealed:
        files = checkpoints.files_of(path)
        digests = {}
        for rank in range(world):
            digests.update(checkpoints.sha256(path, checkpoints.share(files, rank, world)))
        checkpoints.seal(path, {"step": step, "world_size": world, "global_batch": global_batch,
                                "zero_stage": zero_stage}, digests)
    return path


def _run(tmp_path, compose_tiny, *overrides):
    """A run directory as the driver leaves it: config.yaml holds the resolved config."""
    cfg = resolve(compose_tiny(f"run_dir={tmp_path / 'run'}", *overrides)).config
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(to_yaml(cfg))
    return cfg, run


def test_a_new_run_directory_starts_fresh(tmp_path, compose_tiny):
    cfg = resolve(compose_tiny(f"run_dir={tmp_path / 'run'}")).config
    assert resume.find(cfg, tmp_path / "run") is None


def test_the_newest_complete_checkpoint_is_chosen_and_damaged_ones_are_skipped(tmp_path, compose_tiny, capsys):
    cfg, run = _run(tmp_path, compose_tiny)
    _checkpoint(run.checkpoints, 5)
    damaged = _checkpoint(run.checkpoints, 10)
    (damaged / "zero_pp_rank_1_optim_states.pt").write_bytes(b"x")
    _checkpoint(run.checkpoints, 15, sealed=False)
    found = resume.find(cfg, run.path)
    assert found.step == 5
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step_00000010" in out and "step_00000015" in out


def test_keys_a_resume_may_change_do_not_stop_it(tmp_path, compose_tiny):
    _, run = _run(tmp_path, compose_tiny)
    _checkpoint(run.checkpoints, 5)
    changed = resolve(compose_tiny(f"run_dir={run.path}", "train.max_steps=500", "train.log_every=7",
                                   "cluster.num_workers=1")).config
    assert resume.find(changed, run.path).step == 5


def test_a_changed_model_is_refused_naming_the_key_and_both_values(tmp_path, compose_tiny):
    _, run = _run(tmp_path, compose_tiny)
    _checkpoint(run.checkpoints, 5)
    changed = resolve(compose_tiny(f"run_dir={run.path}", "optim.lr=0.5")).config
    with pytest.raises(ConfigError) as error:
        resume.find(changed, run.path)
    (line,) = error.value.problems
    assert "holds a run with a different config" in line and "optim.lr=" in line and "(this command: 0.5)" in line


def test_only_damaged_checkpoints_are_refused_with_every_reason(tmp_path, compose_tiny):
    cfg, run = _run(tmp_path, compose_tiny)
    _checkpoint(run.checkpoints, 5, sealed=False)
    with pytest.raises(ConfigError) as error:
        resume.find(cfg, run.path)
    assert "has checkpoints but none is usable" in error.value.problems[0]
    assert "no completion marker" in error.value.problems[0]


def test_resume_never_ignores_the_checkpoints(tmp_path, compose_tiny):
    cfg, run = _run(tmp_path, compose_tiny)
    _checkpoint(run.checkpoints, 5)  # (validation refuses a run_dir that holds a run with resume=never)
    never = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="never"))
    assert resume.find(never, run.path) is None


def test_a_named_checkpoint_must_be_complete(tmp_path, compose_tiny):
    good = _checkpoint(tmp_path / "elsewhere", 7)
    cfg = resolve(compose_tiny(f"train.resume={good}")).config
    assert resume.find(cfg, tmp_path / "new").step == 7
    bad = _checkpoint(tmp_path / "elsewhere", 9, sealed=False)
    with pytest.raises(ConfigError, match=r"train.resume=.*not a usable checkpoint: .*no completion marker"):
        resume.find(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(bad))), tmp_path / "new")


def test_the_global_batch_is_kept_on_another_world_size(tmp_path, compose_tiny):
    found = checkpoints.load(_checkpoint(tmp_path, 5, world=2, global_batch=16))  # micro 4 x accum 2 x 2 workers
    cfg = resolve(compose_tiny("cluster.num_workers=1")).config
    kept, note = keep_global_batch(cfg, 1, found)
    assert kept.train.grad_accum == 4 and "grad_accum 1 -> 4 keeps the global batch of 16" in note
    assert keep_global_batch(kept, 1, found) == (kept, None)
    odd = checkpoints.load(_checkpoint(tmp_path / "odd", 5, global_batch=6))
    with pytest.raises(ConfigError, match="global batch of 6 sequences, which micro_batch_size 4 x 1 workers"):
        keep_global_batch(cfg, 1, odd)


def test_resolve_plans_again_only_when_a_resume_changes_the_batch(tmp_path, compose_tiny):
    found = checkpoints.load(_checkpoint(tmp_path, 5, world=2, global_batch=16))
    job = resolve(compose_tiny("cluster.num_workers=1"), lambda resolved: found)
    assert job.resume_from == found and job.plan.global_batch == 16 and job.plan.grad_accum == 4
    assert job.deepspeed["gradient_accumulation_steps"] == 4 and any("keeps the global batch" in n for n in job.notes)


def test_a_change_of_world_size_is_announced(tmp_path, capsys):
    found = checkpoints.load(_checkpoint(tmp_path, 5, world=2, zero_stage=0))
    resume.prepare(found, 1)  # ZeRO-0: whole states on every rank, nothing to convert
    assert "elastic resume: step 5 was written by 2 rank(s), continuing on 1" in capsys.readouterr().out


def test_a_hand_converted_universal_checkpoint_is_refused_unread_until_trusted_then_verified(tmp_path, monkeypatch):
    """No manifest: refused before its pickle is opened; trusted once: its hashes recorded; later resumes check
    them, and an altered byte is refused."""
    import torch

    from orchestrator.config.compose import compose

    folder = tmp_path / "universal"
    (folder / "zero").mkdir(parents=True)
    torch.save({"global_steps": 7}, folder / "mp_rank_00_model_states.pt")
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    with pytest.raises(ConfigError, match="converted by hand carries no manifest of hashes"):
        resume.find(compose([f"train.resume={folder}"]), tmp_path / "run")
    assert opened == [] and not (folder / checkpoints.MANIFEST).exists()

    found = resume.find(compose([f"train.resume={folder}", "train.trust_checkpoint=true"]), tmp_path / "run")
    assert found.step == 7 and found.meta["universal_only"] and (folder / checkpoints.MANIFEST).is_file()
    again = resume.find(compose([f"train.resume={folder}"]), tmp_path / "run")  # verified now, no trust needed
    assert again.step == 7

    states = folder / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[-5] ^= 0xFF
    states.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its sha256"):
        resume.find(compose([f"train.resume={folder}"]), tmp_path / "run")
