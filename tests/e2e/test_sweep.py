"""`orchestrator sweep` end to end: Optuna TPE + ASHA over the tiny model, every trial a DeepSpeed job on one
worker that takes both CPUs (so trials run one at a time; the Ray-cluster and Slurm tests sweep 2-worker
trials) on the embedded Ray cluster; killed and resumed; best.yaml retrains the best trial;
each trial's W&B run read back with W&B's own reader; `train -m` as a grid.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import LR_GRID, TINY, command, events, metrics, orchestrator, summary
from tests.wandb_reader import inspect

pytestmark = pytest.mark.slow

SWEEP = ["sweep", *TINY, "optim.lr=tag(log,interval(1e-4,3e-2))", "sweep.algorithm=optuna", "sweep.scheduler=asha",
         "sweep.asha.grace_steps=10", "sweep.num_trials=2", "train.max_steps=30", "train.eval_every=5",
         "train.log_every=5", "train.ckpt_every=5", "data.max_bytes=20000", "cluster.num_workers=1",
         "cluster.cpus_per_worker=2"]


def digests(sweep_dir: Path) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sweep_dir.glob("trials/*/summary.json")}


def running_with_a_checkpoint(sweep_dir: Path) -> list[Path]:
    """Trials that have not ended but have sealed a checkpoint of their own."""
    return [trial for trial in sorted(sweep_dir.glob("trials/*")) if not (trial / "summary.json").exists()
            and any(trial.glob("checkpoints/step_*/COMPLETE"))]


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory) -> tuple[Path, dict[Path, str], subprocess.CompletedProcess, Path]:
    """The sweep, SIGKILLed once its first trial has ended and the next has sealed a checkpoint, then the same
    command again. Returns (sweep dir, the ended trials' summary digests, the rerun, the interrupted trial)."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "s"
    first = subprocess.Popen(command(*SWEEP, f"sweep.dir={sweep_dir}"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (digests(sweep_dir) and running_with_a_checkpoint(sweep_dir)):
            assert first.poll() is None and time.monotonic() < deadline, (
                "the sweep ended before one trial had ended while another had a checkpoint")
            time.sleep(0.1)
    finally:  # SIGKILL whether or not the moment came: a failed wait leaves no sweep running
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    ended, [interrupted] = digests(sweep_dir), running_with_a_checkpoint(sweep_dir)
    again = orchestrator(*SWEEP, f"sweep.dir={sweep_dir}")
    return sweep_dir, ended, again, interrupted


def test_a_killed_sweep_resumes_to_all_its_trials_leaving_finished_ones_untouched(resumed_sweep):
    sweep_dir, ended, again, _ = resumed_sweep
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming sweep" in again.stdout
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(record["trials"]) == 2
    assert {t["status"] for t in record["trials"]} <= {"completed", "early_stopped"}
    assert any(t["status"] == "completed" for t in record["trials"])
    for path, digest in ended.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed on resume"
    for key in ("name", "metric", "mode", "algorithm", "scheduler", "wall_s", "concurrency", "overhead"):
        assert record[key] is not None, key
    for trial in record["trials"]:
        run_dir = Path(trial["run_dir"])
        assert run_dir == sweep_dir / "trials" / trial["id"]
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "model", "checkpoints", "wandb"):
            assert (run_dir / name).exists(), (run_dir, name)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == trial["status"] and summary["steps"] == trial["steps"]
        assert trial["final_metric"] == pytest.approx(summary["final_val_loss"], abs=1e-9)
        assert set(trial["overrides"]) == {"optim.lr"} and trial["wandb_run_id"]


def test_a_trial_killed_with_the_sweep_resumes_from_its_own_checkpoint(resumed_sweep):
    sweep_dir, _, again, interrupted = resumed_sweep
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    logged = events(interrupted)
    assert logged[:2] == ["start", "resume"] and {"finished", "early_stopped"} & set(logged[2:])
    steps = [row["step"] for row in metrics(interrupted)]
    assert steps == sorted(set(steps)) and steps[0] == 5  # every logged step once, across the kill
    assert summary(interrupted)["resumed_from_step"] >= 5


def test_optuna_ran_the_search_and_kept_its_study_in_the_sweep_folder(resumed_sweep):
    import optuna

    sweep_dir, _, _, _ = resumed_sweep
    record = json.loads((sweep_dir / "sweep.json").read_text())
    study = optuna.load_study(study_name=record["name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    proposed = [trial.params["optim.lr"] for trial in study.trials]
    assert len(proposed) >= len(record["trials"]) == 2
    assert all(1e-4 <= lr <= 3e-2 for lr in proposed)
    assert {float(t["overrides"]["optim.lr"]) for t in record["trials"]} <= set(proposed)


def test_every_trial_is_one_wandb_run_in_the_sweeps_group(resumed_sweep):
    sweep_dir, _, _, _ = resumed_sweep
    record = json.loads((sweep_dir / "sweep.json").read_text())
    for trial in record["trials"]:
        run_dir = Path(trial["run_dir"])
        runs = [r["run"] for r in inspect(run_dir / "wandb") if r.get("type") == "run"]
        assert {r["run_id"] for r in runs} == {trial["wandb_run_id"]}
        assert {r["run_group"] for r in runs} == {"sweep"} and {r["job_type"] for r in runs} == {"trial"}
        config = runs[-1]["config"]["update"]
        assert config["sweep"]["trial_overrides"] == trial["overrides"]
        assert config["sweep"]["algorithm"] == "optuna" and config["sweep"]["scheduler"] == "asha"
        [summary] = inspect(run_dir / "wandb", "--summary")
        assert summary["summary"]["status"] == trial["status"]
        exits = [r["exit"]["exit_code"] for r in inspect(run_dir / "wandb") if r.get("type") == "exit"]
        assert exits and set(exits) == {0}  # closed as finished, early-stopped trials too (not "crashed")


def test_best_yaml_retrains_the_best_completed_trial_exactly(resumed_sweep, tmp_path):
    sweep_dir, _, _, _ = resumed_sweep
    record = json.loads((sweep_dir / "sweep.json").read_text())
    best = min((t for t in record["trials"] if t["status"] == "completed"), key=lambda t: t["final_metric"])
    result = orchestrator("train", "--config", str(sweep_dir / "best.yaml"), f"run_dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr[-3000:]
    retrained = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert retrained["final_val_loss"] == pytest.approx(best["final_metric"], abs=1e-6)


def test_a_trial_the_machine_cannot_hold_is_refused_at_once_writing_nothing(tmp_path):
    started = time.monotonic()
    result = orchestrator(*SWEEP, "cluster.num_workers=2", "cluster.cpus_per_worker=2", f"sweep.dir={tmp_path / 's'}",
                          timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "one trial cannot be placed: cluster.num_workers=2 x cluster.cpus_per_worker=2 = 4 CPUs" in line
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_hydra_multirun_is_a_grid_with_one_run_and_one_wandb_run_per_member(lr_grid):
    """`train -m optim.lr=1e-2,3e-3,1e-3,1e-4 sweep.scheduler=asha ...` (tests/e2e/conftest.py)."""
    record = json.loads((lr_grid / "sweep.json").read_text())
    assert record["algorithm"] == "grid"
    assert sorted(float(t["overrides"]["optim.lr"]) for t in record["trials"]) == sorted(map(float, LR_GRID))
    runs = sorted((lr_grid / "trials").iterdir())
    assert sorted(run.name for run in runs) == sorted(t["id"] for t in record["trials"])
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] in ("completed", "early_stopped")
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1
        assert summary["startup"]["imports_s"] < 1.0  # every trial's ranks are copies of the sweep's launcher


def test_trials_that_fail_are_recorded_with_their_root_cause_and_the_sweep_exits_1(tmp_path):
    """A value that only fails at run time (a vocabulary smaller than the tokenizer's): every trial fails."""
    result = orchestrator("sweep", *TINY, "data.max_bytes=20000", "model.vocab_size=10,20", "train.max_failures=0",
                          f"sweep.dir={tmp_path / 's'}")  # no restart of a trial that cannot succeed
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["failed", "failed"]
    for trial in record["trials"]:
        assert trial["error"].startswith(f"model.vocab_size={trial['overrides']['model.vocab_size']}: smaller than "
                                         "the tokenizer's")
    assert not (tmp_path / "s" / "best.yaml").exists()
