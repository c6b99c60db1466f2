"""The driver: the only place that builds the Ray Train trainer.

config -> job (plan/job.py: plan, resume point, DeepSpeed config, resolved once) -> data cache -> run
directory -> Ray Train TorchTrainer running train/loop.py on every worker. Everything that can be wrong
with the inputs (including a run directory whose checkpoints cannot be resumed: train/resume.py) is found
before the run directory is written or Ray starts, and raised as ConfigError. SIGTERM/SIGUSR1 to the driver
become a stop request the workers honour at their next step (train/preemption.py); the command then exits
with Preempted's code. What plugs into the loop comes from the caller: `hooks` (train/hooks.py) and Ray
Train run `callbacks` (a sweep's trial reports to Tune through both).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from orchestrator.config.compose import to_dict, to_yaml
from orchestrator.config.schema import Backend, Config, WandbMode
from orchestrator.errors import ConfigError, Preempted, TrainingError
from orchestrator.launch import local
from orchestrator.launch.worker_process import RANK_IMPORTS
from orchestrator.machine import visible_gpus
from orchestrator.models.registry import modeling_module
from orchestrator.paths import unwritable
from orchestrator.plan.job import Job, resolve
from orchestrator.plan.plan import gpus_per_worker
from orchestrator.redact import redact, redact_text
from orchestrator.rundir import Event, RunDir
from orchestrator.train import engine, failures, resume
from orchestrator.train.hooks import HookFactory
from orchestrator.train.startup import Startup

BACKSTOP_S = 60
HEALTH_CHECK = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
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
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars (loading, writing model shards) in a log
        RANK_IMPORTS: ",".join(("deepspeed", "deepspeed.runtime.engine", "transformers", modeling_module(cfg.model))),
    }
    if cfg.logger.mode is not WandbMode.online:
        env["WANDB_API_KEY"] = ""  # offline runs need no key; it then cannot leak into W&B's files
    if gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def train(cfg: Config, hooks: Sequence[HookFactory] = (), callbacks: Sequence = (),
          startup: Startup | None = None) -> Path:
    """Run the configured job to completion (or resume it) and return its run directory.

    `hooks`: factories of the loop's hooks, built on every rank (train/hooks.py).
    `callbacks`: Ray Train run callbacks (a sweep's trial: Tune's report callback).
    `startup`: the command's start-up timeline (the CLI's starts at process start); None = from this call.
    """
    from orchestrator import tasks

    startup = startup or Startup(time.time())
    # Ray Train's modules take seconds to import; meanwhile this thread plans, prepares data and starts Ray.
    preload = threading.Thread(target=_import_trainer, name="import-ray-train", daemon=True)
    preload.start()

    run_dir = (Path(cfg.run_dir).expanduser() if cfg.run_dir else default_run_dir(cfg)).resolve()
    # Where it cannot write or what the machine cannot hold first: no memory estimate matters then.
    problems = [problem for problem in (unwritable("run_dir", str(run_dir)),
                                        unwritable("data.cache_dir", cfg.data.cache_dir)) if problem]
    if cfg.cluster.name is Backend.local:
        problems += local.preflight(cfg.cluster)
    if problems:
        raise ConfigError(problems)
    if cfg.train.epochs is not None:
        cfg = _steps_for_epochs(cfg)
    job = resolve(dataclasses.replace(cfg, run_dir=str(run_dir)), lambda resolved: resume.find(resolved, run_dir))
    cfg, plan, run = job.config, job.plan, RunDir(run_dir)
    for note in job.notes:
        print(note, flush=True)
    if job.resume_from is not None and run.finished(job.resume_from.step, cfg.train.max_steps):
        print(f"{run_dir} already finished at step {job.resume_from.step}; raise train.max_steps to train further")
        return run_dir
    if job.resume_from is not None:
        resume.prepare(job.resume_from, plan.world_size)
    print(f"plan: {plan.describe()}", flush=True)
    m = plan.memory
    print(f"memory per rank: model states {m['model_states'] / 1e9:.3f} GB, activations "
          f"{m['activations'] / 1e9:.3f} GB, total {m['device'] / 1e9:.2f} GB", flush=True)

    inside_ray = _in_ray_process()
    joined = cfg.cluster.name is not Backend.local and not inside_ray
    if joined:  # join first: no cluster, no data work, no run dir
        _join(cfg, plan.world_size)
        startup.mark("cluster")
    prepared = tasks.for_config(cfg).prepare_data(cfg)
    meta = prepared.meta
    if cfg.model.vocab_size is not None and meta["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError([f"model.vocab_size={cfg.model.vocab_size}: smaller than the tokenizer's "
                           f"{meta['vocab_size']} tokens; raise it or set it to null"])
    train_blocks = "streamed" if meta["streaming"] else f"{meta['train_blocks']} train"
    print(f"data: {train_blocks} / {meta['val_blocks']} val blocks of {meta['seq_len']} tokens "
          f"({meta['dtype']}), vocab {meta['vocab_size']} ({prepared.root})",
          *prepared.describe(plan.total_tokens), sep="\n", flush=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    run.config.write_text(redact_text(to_yaml(cfg)))
    run.clear_stop_request()  # a stop request belongs to the invocation that made it
    if cfg.cluster.name is Backend.local and cpu_workers(cfg):
        engine.build_missing_ops(engine.ops_for(job.deepspeed))
    startup.mark("prepare")
    # A sweep's cluster outlives each trial, and a trial's controller can die with its Tune actor: its placement
    # group must still be freed for the next trial (the cleaner), so trials keep all of Ray Train.
    lean = cfg.cluster.name is Backend.local and not _in_ray_actor()
    _fit(job, run, run.run_id(cfg.logger.run_id), hooks, callbacks, lean, joined, startup, preload)
    last = run.last_event()
    if last.get("event") == Event.preempted:
        raise Preempted(f"stopped at step {last['step']} with a complete checkpoint; "
                        "rerun the same command to resume")
    return run_dir


def _steps_for_epochs(cfg: Config) -> Config:
    """train.epochs as optimizer steps: the data is prepared first (it is cached) to count its training rows."""
    import math

    from orchestrator import tasks
    from orchestrator.plan.plan import make_plan

    rows = tasks.for_config(cfg).prepare_data(cfg).meta["train_blocks"]
    global_batch = make_plan(cfg).global_batch
    steps = max(1, math.ceil(cfg.train.epochs * rows / global_batch))
    print(f"train.epochs={cfg.train.epochs:g}: {rows:,} training rows / global batch {global_batch} -> "
          f"train.max_steps={steps}", flush=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))


def cpu_workers(cfg: Config) -> bool:
    gpus = gpus_per_worker(cfg)
    return (visible_gpus() if gpus is None else gpus) == 0


def _in_ray_actor() -> bool:
    """A sweep's trial: the driver runs inside Tune's actor."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _in_ray_process() -> bool:
    """Ray already runs here (a sweep's trial inside Tune's actor, a program or test session that started it):
    its cluster is the one to use."""
    import ray

    return ray.is_initialized()


def _join(cfg: Config, world_size: int) -> None:
    # torch before Ray joins: in a Ray job's driver the other order makes oneMKL fail to load
    # libtorch_cpu ("Intel oneMKL FATAL ERROR", exit code 2).
    import torch  # noqa: F401

    from orchestrator.launch import ray_cluster

    ray_cluster.connect(cfg.cluster, nodes=ray_nodes(cfg), workers=world_size,
                        gpus_per_worker=gpus_per_worker(cfg) or 0)


def _fit(job: Job, run: RunDir, run_id: str, hooks: Sequence[HookFactory], callbacks: Sequence, lean: bool,
         joined: bool, startup: Startup, preload: threading.Thread) -> None:
    cfg, plan = job.config, job.plan
    # The Train controller polls its workers every 2 s by default, so a finished run waited up to 2 s more
    # to end; 1 s halves that for about 1% of a core (0.5 s cost 1.7%, measured). A lean run's controller is
    # in this process (train/ray_trainer.py), others are actors of the job.
    os.environ.setdefault(HEALTH_CHECK, "1")
    started_local = cfg.cluster.name is Backend.local and local.start(
        cfg.cluster, env_vars={HEALTH_CHECK: os.environ[HEALTH_CHECK]}, lean=True,
        rank_env=worker_env(cfg, 0) if cpu_workers(cfg) else None)
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

    from orchestrator.launch import ray_cluster
    from orchestrator.train.loop import train_worker
    from orchestrator.train.payload import WorkerPayload
    from orchestrator.train.ray_trainer import LeanTorchTrainer

    gpus = gpus_per_worker(cfg)
    if gpus is None:
        gpus = 1 if local.gpus() >= plan.world_size else 0
    payload = WorkerPayload(config=redact(to_dict(cfg)), plan=plan, deepspeed=job.deepspeed, run_dir=str(run.path),
                            run_id=run_id, progress_board=board_name, startup=startup, resume_from=job.resume_from,
                            hooks=tuple(hooks))
    resources = {"CPU": cfg.cluster.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = LeanTorchTrainer(
        train_worker,
        lean_cluster=lean,
        board=board,
        train_loop_config=payload,
        # The watchdog ends a stalled job at collective_timeout_s and names the rank that stalled; the process
        # group's own timeout is only a backstop, set later so it cannot preempt the watchdog's verdict.
        process_group_timeout_s=cfg.train.collective_timeout_s + BACKSTOP_S,
        scaling_config=ScalingConfig(num_workers=plan.world_size, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name="train",
            storage_path=str(run.ray_storage),
            # A restart the cluster cannot place (a node lost) fails once, after cluster.join_timeout_s (the
            # controller's start timeout, below), instead of Ray's default of retrying forever.
            failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=0),
            worker_runtime_env={"env_vars": worker_env(cfg, gpus)},
            callbacks=list(callbacks) or None,
        ),
    )
    # Ray Train hands this to its controller: how long a worker group may wait for its place.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(cfg.cluster.join_timeout_s))
    # A worker group gets join_timeout_s to be placed, then collective_timeout_s to start its process group.
    watchdog = Watchdog(board, cfg.train.collective_timeout_s,
                        start_limit_s=cfg.cluster.join_timeout_s + cfg.train.collective_timeout_s)
    from orchestrator.train.preemption import stop_on_signals

    try:
        with stop_on_signals(run), watchdog:  # after Ray starts: its core installs handlers of its own
            trainer.fit()
        refused = ray.get(board.failure.remote())  # the ranks ended the job themselves (no room on disk)
    except Exception as error:  # Ray wraps worker exceptions; show the root cause in one line
        cause = failures.reason(error, run.path, cfg.cluster.join_timeout_s, plan.world_size, watchdog.last,
                                unstarted=watchdog.ended_controller)
        _failed(run, cause)
        raise TrainingError(cause) from error
    finally:
        if started_local:
            local.stop()
        elif joined:
            ray_cluster.disconnect()
    if refused:
        cause = failures.out_of_room(refused, run.path)
        _failed(run, cause)
        raise TrainingError(cause)


def _failed(run: RunDir, cause: str) -> None:
    """events.jsonl's last line says the command failed and why, so `compare` tells a failed run from a running
    one; on a full disk even that line may not fit, and the command's own line says it all."""
    try:
        run.append_event(Event.failed, run.last_logged_step(), error=cause)
    except OSError:
        pass


def _import_trainer() -> None:
    import orchestrator.train.loop  # noqa: F401
    import orchestrator.train.ray_trainer  # noqa: F401
    import orchestrator.train.watchdog  # noqa: F401


def ray_nodes(cfg: Config) -> int:
    """Ray nodes to wait for: the allocation's machines (plus KubeRay's head pod, which trains nothing)."""
    return {Backend.ray: 1, Backend.slurm: cfg.cluster.nodes, Backend.k8s: cfg.cluster.nodes + 1}[cfg.cluster.name]
