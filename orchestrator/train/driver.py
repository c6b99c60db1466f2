"""The driver: the only place that builds the Ray Train trainer.

config -> plan -> DeepSpeed dict -> data cache -> run directory -> Ray Train TorchTrainer.
Everything that can be wrong with the inputs is found before the run directory is created
or Ray starts, and raised as ConfigError.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from pathlib import Path

from orchestrator.config.compose import to_dict, to_yaml
from orchestrator.config.schema import Config
from orchestrator.ds_config import deepspeed_config
from orchestrator.errors import ConfigError, TrainingError
from orchestrator.plan import Plan, make_plan, resolved_config


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
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # keep rank 0's progress lines single, not echoed twice
    }
    if gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def train(cfg: Config) -> Path:
    """Run the configured job to completion and return its run directory."""
    from orchestrator.data.pipeline import prepare

    if cfg.cluster.name != "local":
        raise ConfigError([f"cluster={cfg.cluster.name}: `orchestrator train` runs on cluster=local; "
                           f"size this cluster with `orchestrator plan cluster={cfg.cluster.name} ...`"])
    plan = make_plan(cfg)
    for reason in plan.auto_reasons:
        print(f"zero=auto: {reason}", flush=True)
    if plan.fits is False and not cfg.plan.force:
        raise ConfigError([f"the plan does not fit: {problem} (see `orchestrator plan`; "
                           "try zero=auto, or plan.force=true to run anyway)" for problem in plan.fit_problems])
    run_dir = Path(cfg.run_dir).expanduser() if cfg.run_dir else default_run_dir(cfg)
    run_dir = run_dir.resolve()
    cfg = dataclasses.replace(resolved_config(cfg, plan), run_dir=str(run_dir))
    print(f"plan: {plan.describe()}", flush=True)
    if plan.memory:
        m = plan.memory
        print(f"memory per rank: model states {m['model_states'] / 1e9:.3f} GB, activations "
              f"{m['activations'] / 1e9:.3f} GB, total {m['device'] / 1e9:.2f} GB", flush=True)

    prepared = prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)
    meta = prepared.meta
    if cfg.model.vocab_size is not None and meta["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError([f"model.vocab_size={cfg.model.vocab_size}: smaller than the tokenizer's "
                           f"{meta['vocab_size']} tokens; raise it or set it to null"])
    print(f"data: {meta['train_blocks']} train / {meta['val_blocks']} val blocks of {meta['seq_len']} tokens, "
          f"vocab {meta['vocab_size']} ({prepared.root})", flush=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    _fit(cfg, plan, run_dir)
    return run_dir


def _fit(cfg: Config, plan: Plan, run_dir: Path) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.launch import local
    from orchestrator.train.loop import train_worker

    started_ray = local.start(cfg.cluster)
    gpus = cfg.cluster.gpus_per_worker
    if gpus is None:
        gpus = 1 if local.gpus() >= cfg.cluster.num_workers else 0
    payload = {
        "config": to_dict(cfg),
        "plan": plan.to_dict(),
        "plan_text": plan.describe(),
        "ds_config": deepspeed_config(cfg, plan),
        "run_dir": str(run_dir),
        "run_id": uuid.uuid4().hex[:12],
    }
    resources = {"CPU": cfg.cluster.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=cfg.cluster.num_workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name="train",
            storage_path=str(run_dir / ".ray"),
            failure_config=FailureConfig(max_failures=0),
            worker_runtime_env={"env_vars": worker_env(cfg, gpus)},
        ),
    )
    try:
        trainer.fit()
    except Exception as error:  # Ray wraps worker exceptions; show the root cause in one line
        raise TrainingError(_root_cause(error)) from error
    finally:
        if started_ray:
            local.stop()


def _root_cause(error: BaseException) -> str:
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        error = failure
        while error.__cause__ is not None:
            error = error.__cause__
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return f"rank {rank}: {type(error).__name__}: {lines[-1] if lines else ''}"
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
