"""`orchestrator sweep`: a hyperparameter search whose every trial is a whole distributed training run.

command line -> plain overrides + sweep expressions (space.py) -> checks, all before anything
starts: the space, the sweep settings, one composed trial config, the folder, and whether one
trial fits the cluster -> Ray Tune (grid / random / Optuna TPE, ASHA on the training step) on
the embedded or joined Ray cluster -> each trial runs trial.run_trial -> sweep.json, best.yaml.

Ray Tune owns search, scheduling and resume (its experiment state lives in <sweep_dir>/tune);
our run directories own everything a trial produced. Rerunning the same command with the same
sweep.dir, or `orchestrator sweep --resume <sweep_dir>`, continues an interrupted sweep.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from orchestrator.config.overrides import as_override, as_overrides, split_overrides
from orchestrator.config.schema import Backend, Config, SearchAlgorithm, SweepScheduler
from orchestrator.errors import ConfigError
from orchestrator.rundir import SweepDir
from orchestrator.sweep import record, space
from orchestrator.sweep.trial import run_trial

METRICS = {"clm": ("val_loss", "val_ppl", "loss"), "sft": ("val_loss", "val_ppl", "loss"),
           "classify": ("val_loss", "val_accuracy", "val_macro_f1", "loss"),
           "distill": ("val_loss", "val_ppl", "loss"),
           "dpo": ("val_loss", "val_preference_accuracy", "val_reward_margin", "loss")}
"""What sweep.metric may name, by task: the metrics its trials report (a name another task reports would leave
the sweep without a best trial)."""
TRIAL_DRIVER_MEMORY = 256 * 2**20


def sweep(overrides: list[str], config_file: str | None = None, resume_dir: str | None = None) -> int:
    if resume_dir is not None:
        overrides, config_file = _request(resume_dir, overrides, config_file)
    plain, swept = split_overrides(overrides)
    from orchestrator.config.compose import compose

    if config_file is not None:  # trials compose from it wherever their process runs
        config_file = str(Path(config_file).expanduser().resolve())
    base = compose(plain, config_file)
    params, problems = search_problems(base, swept, plain, config_file)
    sweep_dir = Path(resume_dir or base.sweep.dir or _default_dir(base.sweep.name)).expanduser().resolve()
    problems += _unplaceable(base)  # on this machine; a joined cluster is checked once joined
    from orchestrator.paths import unwritable

    if problem := unwritable("sweep.dir", str(sweep_dir)):
        problems.append(problem)
    if problems:
        raise ConfigError(problems)

    trials = space.grid_size(params) if base.sweep.algorithm is SearchAlgorithm.grid else base.sweep.num_trials
    _join(base)  # a joined cluster that cannot place one trial is refused here, before anything is written
    try:
        concurrency = _concurrency(base, trials)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not SweepDir(sweep_dir).request.exists():
            SweepDir(sweep_dir).request.write_text(json.dumps({"overrides": overrides, "config_file": config_file}))
        print(f"sweep {base.sweep.name}: {trials} trials, {concurrency} at a time ({_trial_need(base)}); "
              f"{sweep_dir}", flush=True)
        from orchestrator import tasks

        tasks.for_config(base).prepare_data(base)  # once, before trials race to build the cache
        started = time.monotonic()
        outcomes = _tune(base, params, plain, config_file, sweep_dir, trials, concurrency)
    finally:
        _leave(base)
    maximize = base.sweep.mode.value == "max"
    runs = SweepDir(sweep_dir).trial_dirs()
    known = {run.name for run in runs}
    trial_records = [record.trial_record(run, outcomes.get(run.name, {}), base.sweep.metric, maximize) for run in runs]
    trial_records += [_failed_without_run(sweep_dir, trial_id, outcome)
                      for trial_id, outcome in outcomes.items() if trial_id not in known]
    written = record.write(sweep_dir, base.sweep, trial_records, time.monotonic() - started, concurrency)
    _table(written, sweep_dir)
    return 0 if any(t["status"] == "completed" for t in trial_records) else 1


def search_problems(base: Config, swept: dict[str, str], plain: list[str],
                    config_file: str | None) -> tuple[list[space.Param], list[str]]:
    """The search space (base.sweep.params + command-line expressions) and everything wrong with it."""
    from orchestrator.config.compose import compose

    params, problems = space.parse({**base.sweep.params, **swept})
    problems += space.check(params, base.sweep.algorithm) + _check_settings(base, params)
    if params:  # every key and value type, as the first trial will compose them
        try:
            compose([*plain, *(as_override(p.key, p.first()) for p in params)], config_file)
        except ConfigError as error:
            problems += [f"sweep: {problem}" for problem in error.problems]
    return params, problems


def _request(resume_dir: str, overrides: list[str], config_file: str | None) -> tuple[list[str], str | None]:
    path = SweepDir(Path(resume_dir).expanduser()).request
    if not path.is_file():
        raise ConfigError([f"--resume {resume_dir}: not a sweep folder (no {path.name})"])
    if overrides or config_file:
        raise ConfigError([f"--resume {resume_dir}: resumes the sweep as it was started; give no overrides"])
    request = json.loads(path.read_text())
    return request["overrides"], request["config_file"]


def _default_dir(name: str) -> Path:
    return Path("sweeps") / f"{name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _check_settings(cfg: Config, params: list[space.Param]) -> list[str]:
    s, problems = cfg.sweep, []
    if not s.params and not params:
        problems.append("sweep.params: nothing to search; add a sweep expression such as "
                        "'optim.lr=tag(log,interval(1e-4,3e-2))', or pick sweep=lr_search")
    if s.algorithm is SearchAlgorithm.grid and s.num_trials is not None:
        problems.append(f"sweep.num_trials={s.num_trials}: must be null with sweep.algorithm=grid (a grid runs "
                        f"every combination: {space.grid_size(params)} trials)")
    if s.algorithm is not SearchAlgorithm.grid and (s.num_trials is None or s.num_trials < 1):
        problems.append(f"sweep.num_trials={'null' if s.num_trials is None else s.num_trials}: "
                        f"sweep.algorithm={s.algorithm.value} needs a number of trials >= 1")
    reported = METRICS[cfg.task.name.value]
    if s.metric not in reported:
        problems.append(f"sweep.metric={s.metric}: must be one of {', '.join(reported)} (what task="
                        f"{cfg.task.name.value} reports)")
    if s.max_concurrent is not None and s.max_concurrent < 1:
        problems.append(f"sweep.max_concurrent={s.max_concurrent}: must be >= 1, or null")
    if s.scheduler is SweepScheduler.asha:
        if not 1 <= s.asha.grace_steps <= cfg.train.max_steps:
            problems.append(f"sweep.asha.grace_steps={s.asha.grace_steps}: must be between 1 and "
                            f"train.max_steps={cfg.train.max_steps}")
        if s.asha.reduction_factor < 2:
            problems.append(f"sweep.asha.reduction_factor={s.asha.reduction_factor}: must be >= 2")
        if cfg.train.eval_every < 1:
            problems.append("train.eval_every=0: ASHA judges trials at evaluations; evaluate every few steps "
                            f"(at most sweep.asha.grace_steps={s.asha.grace_steps} for the first judgement on time)")
    return problems


def _trial_need(cfg: Config) -> str:
    from orchestrator.plan.plan import gpus_per_worker, world_and_ranks_per_node

    gpus = f" + {gpus_per_worker(cfg)} GPU" if gpus_per_worker(cfg) else ""
    return f"a trial takes {world_and_ranks_per_node(cfg)[0]} workers x {cfg.cluster.cpus_per_worker} CPU{gpus}"


def _unplaceable(cfg: Config) -> list[str]:
    """A trial that cannot be placed would leave the sweep PENDING forever: refuse it with the arithmetic."""
    if cfg.cluster.name is not Backend.local:
        return []  # a joined cluster is checked once joined (ray_cluster.preflight)
    from orchestrator.launch import local

    return [f"sweep: one trial cannot be placed: {problem}" for problem in local.preflight(cfg.cluster)]


TRIAL_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
"""Trials chdir nowhere: relative paths on the command line mean in a trial what they meant here."""


def _join(cfg: Config) -> None:
    """Start the embedded cluster (workers' output stays in Ray's logs: trial lines speak), or join one."""
    from orchestrator.launch import local, ray_cluster
    from orchestrator.plan.plan import gpus_per_worker, world_and_ranks_per_node
    from orchestrator.train.driver import cpu_workers, ray_nodes, worker_env

    if cfg.cluster.name is Backend.local:  # every trial's CPU ranks start as copies of one launcher
        local.start(cfg.cluster, log_to_driver=False, env_vars=TRIAL_ENV,
                    rank_env=worker_env(cfg, 0) if cpu_workers(cfg) else None)
        return
    import torch  # noqa: F401  (before Ray joins: see train/driver.py)

    ray_cluster.connect(cfg.cluster, nodes=ray_nodes(cfg), workers=world_and_ranks_per_node(cfg)[0],
                        gpus_per_worker=gpus_per_worker(cfg) or 0, env_vars=TRIAL_ENV)


def _leave(cfg: Config) -> None:
    from orchestrator.launch import local, ray_cluster

    if cfg.cluster.name is Backend.local:
        local.stop()
    else:
        ray_cluster.disconnect()


def _concurrency(cfg: Config, trials: int) -> int:
    """Trials at once: what the cluster's CPUs and GPUs hold (each trial's driver reserves none), capped."""
    import ray

    from orchestrator.plan.plan import gpus_per_worker, world_and_ranks_per_node

    world = world_and_ranks_per_node(cfg)[0]
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // (world * cfg.cluster.cpus_per_worker))
    gpus = gpus_per_worker(cfg) or 0
    if gpus:
        fits = min(fits, int(total.get("GPU", 0) // (world * gpus)))
    return max(1, min(fits, cfg.sweep.max_concurrent or math.inf, trials))


def _tune(cfg: Config, params: list[space.Param], plain: list[str], config_file: str | None, sweep_dir: Path,
          trials: int, concurrency: int) -> dict[str, dict]:
    """Run (or resume) the search; returns each trial's outcome by trial id."""
    from ray import tune

    from orchestrator.sweep.events import EarlyStopByRequest, TrialLines

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no Tune status tables; TrialLines speaks instead
    # A failed trial's one result carries its status and error but no metric; Tune would otherwise
    # end the whole sweep there. ASHA skips results without the metric; Optuna marks the trial pruned.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    warnings.filterwarnings("ignore", message="The reported value is ignored")  # Optuna, on Tune's last result
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_overrides=plain, config_file=config_file, sweep_dir=str(sweep_dir)),
        # The trial's driver only waits: no CPU (its workers' bundles are Ray Train's to place), just a
        # little memory, since Tune needs a bundle that asks for something.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    s = cfg.sweep
    lines = TrialLines(s.metric)
    experiment = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(experiment)):
        print(f"resuming sweep {s.name} from {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.search_space(params, s.algorithm),
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode.value, search_alg=_searcher(cfg, sweep_dir, concurrency),
                scheduler=EarlyStopByRequest.for_sweep(cfg, SweepDir(sweep_dir)),
                num_samples=1 if s.algorithm is SearchAlgorithm.grid else trials),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0, callbacks=[lines],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    # Tune lists its files relative to the working folder. A Ray job's working folder (its uploaded
    # package) was seen deleted under a running sweep, so work from the sweep's own folder.
    os.chdir(sweep_dir)
    results = tuner.fit()
    outcomes = {}
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        if result.error is not None:
            metrics.update(status="failed", error=str(result.error).strip().splitlines()[-1])
        outcomes[trial_id] = {**metrics, "overrides": as_overrides(result.config or {})}
    return outcomes


def _searcher(cfg: Config, sweep_dir: Path, concurrency: int):
    """The search algorithm, limited to `concurrency` trials at once (more would wait for workers)."""
    from ray import tune

    s = cfg.sweep
    if s.algorithm is SearchAlgorithm.optuna:
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        # The study lives in the sweep's folder, so it outlives the process that ran it.
        storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")
        return ConcurrencyLimiter(OptunaSearch(seed=s.seed, storage=storage, study_name=s.name), concurrency)
    return tune.search.BasicVariantGenerator(random_state=s.seed, max_concurrent=concurrency)


def _failed_without_run(sweep_dir: Path, trial_id: str, outcome: dict) -> dict:
    """A trial that failed before its run directory existed (a config its values made invalid)."""
    return {"id": trial_id, "overrides": outcome.get("overrides", {}), "status": "failed",
            "best_metric": None, "best_step": None, "final_metric": None, "final_step": None, "steps": 0,
            "wall_s": outcome.get("time_total_s"), "run_dir": str(SweepDir(sweep_dir).trial(trial_id).path),
            "wandb_run_id": None, "error": outcome.get("error")}


def _table(written: dict, sweep_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = written["metric"]
    table = Table(title=f"sweep {written['name']}: {metric} ({written['mode']})")
    for column in ("trial", "status", "overrides", f"best {metric}", f"final {metric}", "steps", "wall s"):
        table.add_column(column)
    for t in written["trials"]:
        table.add_row(t["id"], t["status"] + (f": {t['error']}" if t["error"] else ""),
                      " ".join(f"{k}={v}" for k, v in t["overrides"].items()),
                      _num(t["best_metric"]), _num(t["final_metric"]), str(t["steps"]), _num(t["wall_s"], 1))
    Console(file=sys.stdout, width=160).print(table)
    folder = SweepDir(sweep_dir)
    print(f"sweep.json: {folder.record}", flush=True)
    if folder.best.exists():
        print(f"best config: {folder.best} (retrain: orchestrator train --config {folder.best} run_dir=...)",
              flush=True)


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

