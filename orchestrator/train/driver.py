"""The driver: the only place that builds the Ray Train trainer.

config -> plan -> DeepSpeed dict -> data cache -> run directory -> Ray Train TorchTrainer.
Everything that can be wrong with the inputs (including a run directory whose checkpoints
cannot be resumed) is found before the run directory is written or Ray starts, and raised
as ConfigError. SIGTERM/SIGUSR1 to the driver become a STOP request the workers honour at
their next step (checkpoint, then stop); the command then exits with Preempted's code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

from orchestrator.config.compose import to_dict, to_yaml
from orchestrator.config.schema import Backend, Config, WandbMode
from orchestrator.errors import ConfigError, Preempted, TrainingError
from orchestrator.launch import local
from orchestrator.paths import unwritable
from orchestrator.plan.deepspeed import deepspeed_config
from orchestrator.plan.plan import Plan, gpus_per_worker, make_plan, refuse_unfit, resolved_config
from orchestrator.redact import redact, redact_text
from orchestrator.rundir import checkpoints as checkpoint
from orchestrator.train import elastic, failures
from orchestrator.train.loop import EARLY_STOP, STOP_FILE
from orchestrator.train.startup import Startup

# Keys that may change between the run that wrote a checkpoint and the command that resumes it.
_RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
                      "train.ckpt_every", "train.keep_checkpoints", "train.resume", "train.max_failures",
                      "train.micro_batch_size", "train.grad_accum",  # the global batch is kept (train/elastic.py)
                      "train.collective_timeout_s", "logger.", "cluster.", "plan.", "submit.", "run_dir",
                      "data.cache_dir", "data.num_proc", "data.tokenize_on", "zero.offload_", "zero.overlap_comm",
                      "sweep.")


BACKSTOP_S = 60
"""Seconds the process group's own timeout allows beyond train.collective_timeout_s (the watchdog's)."""


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.name}-{stamp}"


def worker_env(cfg: Config, gpus_per_worker: int) -> dict[str, str]:
    """Environment for every worker process. Ray does not set thread counts the way torchrun does."""
    threads = str(cfg.cluster.cpus_per_worker)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_TOKEN": "",  # never needed offline; keep it out of every worker
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # keep rank 0's progress lines single, not echoed twice
    }
    if cfg.logger.mode is not WandbMode.online:
        env["WANDB_API_KEY"] = ""  # offline runs need no key; it then cannot leak into W&B's files
    if gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def train(cfg: Config, report_to_tune: bool = False, startup: Startup | None = None) -> Path:
    """Run the configured job to completion (or resume it) and return its run directory.

    `report_to_tune`: inside a Ray Tune trial (a sweep), every evaluation is reported to Tune too.
    `startup`: the command's start-up timeline (the CLI's starts at process start); None = from this call.
    """
    from orchestrator.data.pipeline import describe_mixture, prepare

    startup = startup or Startup(time.time())
    # Ray Train's modules take seconds to import; meanwhile this thread plans, prepares data and starts Ray.
    preload = threading.Thread(target=_import_trainer, name="import-ray-train", daemon=True)
    preload.start()

    plan = make_plan(cfg)
    for reason in plan.auto_reasons:
        print(f"zero=auto: {reason}", flush=True)
    run_dir = Path(cfg.run_dir).expanduser() if cfg.run_dir else default_run_dir(cfg)
    run_dir = run_dir.resolve()
    # Where it cannot write or what the machine cannot hold first: no memory estimate matters then.
    problems = [problem for problem in (unwritable("run_dir", str(run_dir)),
                                        unwritable("data.cache_dir", cfg.data.cache_dir)) if problem]
    if cfg.cluster.name is Backend.local:
        problems += local.preflight(cfg.cluster)
    if problems:
        raise ConfigError(problems)
    refuse_unfit(cfg, plan)
    cfg = dataclasses.replace(resolved_config(cfg, plan), run_dir=str(run_dir))
    resume_from = _resume_point(cfg, run_dir)
    if resume_from is not None and _finished(run_dir, resume_from.step, cfg.train.max_steps):
        print(f"{run_dir} already finished at step {resume_from.step}; raise train.max_steps to train further")
        return run_dir
    if resume_from is not None:
        cfg, plan = _continue_from(cfg, plan, resume_from)
    print(f"plan: {plan.describe()}", flush=True)
    if plan.memory:
        m = plan.memory
        print(f"memory per rank: model states {m['model_states'] / 1e9:.3f} GB, activations "
              f"{m['activations'] / 1e9:.3f} GB, total {m['device'] / 1e9:.2f} GB", flush=True)

    joined = cfg.cluster.name is not Backend.local and not _in_ray_process()
    if joined:  # join first: no cluster, no data work, no run dir
        # torch before Ray joins: in a Ray job's driver the other order makes oneMKL fail to load
        # libtorch_cpu ("Intel oneMKL FATAL ERROR", exit code 2).
        import torch  # noqa: F401

        from orchestrator.launch import ray_cluster

        ray_cluster.connect(cfg.cluster, nodes=ray_nodes(cfg), workers=plan.world_size,
                            gpus_per_worker=gpus_per_worker(cfg) or 0)
        startup.mark("cluster")
    prepared = prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)
    meta = prepared.meta
    if cfg.model.vocab_size is not None and meta["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError([f"model.vocab_size={cfg.model.vocab_size}: smaller than the tokenizer's "
                           f"{meta['vocab_size']} tokens; raise it or set it to null"])
    train_blocks = "streamed" if meta["streaming"] else f"{meta['train_blocks']} train"
    print(f"data: {train_blocks} / {meta['val_blocks']} val blocks of {meta['seq_len']} tokens "
          f"({meta['dtype']}), vocab {meta['vocab_size']} ({prepared.root})",
          *describe_mixture(prepared, plan.total_tokens), sep="\n", flush=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(redact_text(to_yaml(cfg)))
    (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stop request belongs to the invocation that made it
    run_id = _run_id(run_dir, cfg.logger.run_id)
    startup.mark("prepare")
    _fit(cfg, plan, run_dir, run_id, resume_from, report_to_tune, joined, startup, preload)
    last = _last_event(run_dir)
    if last.get("event") == "preempted":
        raise Preempted(f"stopped at step {last['step']} with a complete checkpoint; "
                        "rerun the same command to resume")
    return run_dir


def _in_ray_process() -> bool:
    """A sweep's trial runs the driver inside a Ray actor: its cluster is already the one to use."""
    import ray

    return ray.is_initialized()


def _finished(run_dir: Path, step: int, max_steps: int) -> bool:
    """The run wrote its summary at its last step: max_steps, or earlier when a sweep stopped it early."""
    summary = run_dir / "summary.json"
    return summary.exists() and (step >= max_steps or json.loads(summary.read_text()).get("status") == EARLY_STOP)


def _run_id(run_dir: Path, chosen: str | None) -> str:
    """One W&B run id per run directory (logger.run_id, else a new one), kept across reruns and restarts."""
    record = run_dir / "run.json"
    if record.exists():
        return json.loads(record.read_text())["run_id"]
    run_id = chosen or uuid.uuid4().hex[:12]
    record.write_text(json.dumps({"run_id": run_id}))
    return run_id


def _changed_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(current)):
        full = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{full}.")
        elif a != b and not full.startswith(_RESUMABLE_CHANGES):
            changed.append(f"{full}={a} (this command: {b})")
    return changed


def _resume_point(cfg: Config, run_dir: Path) -> checkpoint.Checkpoint | None:
    """The checkpoint this command continues from, its hashes verified, or None for a fresh start;
    ConfigError if unusable."""
    import yaml

    resume = cfg.train.resume
    if resume not in ("auto", "never"):
        path = Path(resume).expanduser().resolve()
        if elastic.is_universal_folder(path) and not (path / checkpoint.MARKER).exists():
            return elastic.hand_converted(path)
        reason = checkpoint.problem(path, verify=True)
        if reason:
            raise ConfigError([f"train.resume={resume}: not a usable checkpoint: {reason}"])
        return checkpoint.load(path)
    if resume == "never" or not (run_dir / "config.yaml").exists():
        return None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    changed = _changed_keys(saved, to_dict(cfg))
    if changed:
        raise ConfigError([f"run_dir={run_dir} holds a run with a different config: {', '.join(changed)}; "
                           "keep those values to resume, or pick a new run_dir"])
    found, skipped = checkpoint.newest_usable(run_dir / "checkpoints")
    for path, reason in skipped:
        print(f"warning: skipping checkpoint {path}: {reason}", flush=True)
    if found is None and skipped:
        listed = "; ".join(f"{path}: {reason}" for path, reason in skipped)
        raise ConfigError([f"run_dir={run_dir} has checkpoints but none is usable ({listed}); "
                           "fix or remove them, or pick a new run_dir"])
    return found


def _continue_from(cfg: Config, plan: Plan, found: checkpoint.Checkpoint) -> tuple[Config, Plan]:
    """Keep the checkpoint's global batch on this world size (the plan follows), and convert a sharded
    checkpoint of another world size to a universal one."""
    cfg, note = elastic.keep_global_batch(cfg, plan.world_size, found)
    if note:
        print(note, flush=True)
        plan = make_plan(cfg)
        refuse_unfit(cfg, plan)
    if found.world_size and found.world_size != plan.world_size:
        print(elastic.describe(found, plan.world_size), flush=True)
    if elastic.needs_universal(found, plan.world_size) and not found.meta.get("universal_only"):
        elastic.ensure_universal(found)
    return cfg, plan


@contextlib.contextmanager
def _stop_on_signals(run_dir: Path):
    """SIGTERM/SIGUSR1 (a scheduler's preemption notice) -> STOP file -> workers checkpoint and stop.

    Only a process's main thread may set handlers: a sweep's trial runs in a Tune thread, and its
    trials are stopped through the STOP file directly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        (run_dir / STOP_FILE).write_text(signal.Signals(signum).name)
        print(f"{signal.Signals(signum).name} received: checkpointing at the next step, then stopping", flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _last_event(run_dir: Path) -> dict:
    events = run_dir / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _fit(cfg: Config, plan: Plan, run_dir: Path, run_id: str, resume_from: checkpoint.Checkpoint | None,
         report_to_tune: bool, joined: bool, startup: Startup, preload: threading.Thread) -> None:
    # The Train controller polls its workers every 2 s by default, so a finished run waited up to 2 s more
    # to end; 1 s halves that for about 1% of a core (0.5 s cost 1.7%, measured).
    started_local = cfg.cluster.name is Backend.local and local.start(
        cfg.cluster, env_vars={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1"}, lean=True)
    if started_local:
        startup.mark("cluster")
    import ray

    from orchestrator.train.watchdog import ProgressBoard, Watchdog

    # The board's process starts while this one finishes importing Ray Train (the preload thread).
    board_name = f"progress-{run_id}-{uuid.uuid4().hex[:8]}"
    # On the driver's node: the board must outlive the loss of any other node.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(ProgressBoard).options(name=board_name, scheduling_strategy=here).remote()
    preload.join()
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from orchestrator.launch import ray_cluster
    from orchestrator.train.loop import train_worker
    from orchestrator.train.ray_trainer import LeanTorchTrainer

    gpus = gpus_per_worker(cfg)
    if gpus is None:
        gpus = 1 if local.gpus() >= plan.world_size else 0
    payload = {
        "config": redact(to_dict(cfg)),
        "plan": plan.to_dict(),
        "plan_text": plan.describe(),
        "ds_config": deepspeed_config(cfg, plan),
        "run_dir": str(run_dir),
        "run_id": run_id,
        "resume_from": resume_from and {"path": str(resume_from.path), "step": resume_from.step,
                                        "world_size": resume_from.world_size, "meta": resume_from.meta},
        "progress_board": board_name,
        "report_metrics": report_to_tune,
        "startup": startup.to_payload(),
    }
    resources = {"CPU": cfg.cluster.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = LeanTorchTrainer(
        train_worker,
        # A sweep's cluster outlives each trial, and a trial's controller can die with its Tune actor: its
        # placement group must still be freed for the next trial (the cleaner), so sweeps keep all of Ray Train.
        lean_cluster=cfg.cluster.name is Backend.local and not report_to_tune,
        board=board,
        train_loop_config=payload,
        # The watchdog ends a stalled job at collective_timeout_s and names the rank that stalled; the process
        # group's own timeout is only a backstop, set later so it cannot preempt the watchdog's verdict.
        torch_config=TorchConfig(timeout_s=cfg.train.collective_timeout_s + BACKSTOP_S),
        scaling_config=ScalingConfig(num_workers=plan.world_size, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name="train",
            storage_path=str(run_dir / ".ray"),
            # A restart the cluster cannot place (a node lost) fails once, after cluster.join_timeout_s (the
            # controller's start timeout, below), instead of Ray's default of retrying forever.
            failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=0),
            worker_runtime_env={"env_vars": worker_env(cfg, gpus)},
            callbacks=_tune_report() if report_to_tune else None,
        ),
    )
    # Ray Train hands this to its controller: how long a worker group may wait for its place.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(cfg.cluster.join_timeout_s))
    # A worker group gets join_timeout_s to be placed, then collective_timeout_s to start its process group.
    watchdog = Watchdog(board, cfg.train.collective_timeout_s,
                        start_limit_s=cfg.cluster.join_timeout_s + cfg.train.collective_timeout_s)
    try:
        with _stop_on_signals(run_dir), watchdog:  # after Ray starts: its core installs handlers of its own
            trainer.fit()
    except Exception as error:  # Ray wraps worker exceptions; show the root cause in one line
        cause = failures.reason(error, run_dir, cfg.cluster.join_timeout_s, plan.world_size, watchdog.last,
                                unstarted=watchdog.ended_controller)
        _record_failure(run_dir, cause)
        raise TrainingError(cause) from error
    finally:
        if started_local:
            local.stop()
        elif joined:
            ray_cluster.disconnect()


def _import_trainer() -> None:
    import orchestrator.train.loop  # noqa: F401
    import orchestrator.train.ray_trainer  # noqa: F401
    import orchestrator.train.watchdog  # noqa: F401


def _record_failure(run_dir: Path, cause: str) -> None:
    """events.jsonl's last line says the command failed and why, so `compare` tells a failed run from a running one."""
    metrics = run_dir / "metrics.jsonl"
    step = 0
    for line in reversed(metrics.read_text().splitlines() if metrics.exists() else []):
        try:  # a rank killed mid-write can leave a torn last line
            step = json.loads(line)["step"]
            break
        except (json.JSONDecodeError, KeyError):
            continue
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "failed", "step": step, "time": time.time(), "error": cause}) + "\n")


def _tune_report() -> list:
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def ray_nodes(cfg: Config) -> int:
    """Ray nodes to wait for: the allocation's machines (plus KubeRay's head pod, which trains nothing)."""
    return {Backend.ray: 1, Backend.slurm: cfg.cluster.nodes, Backend.k8s: cfg.cluster.nodes + 1}[cfg.cluster.name]
