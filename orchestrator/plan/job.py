"""A config resolved once into what runs: the frozen job description every command hands on.

    config --make_plan--> plan --refuse_unfit--> config with the plan's choices written back
           (a resume: the checkpoint's global batch kept on this world size) --> DeepSpeed config

`train`, `submit` and `sweep` all call `resolve`; nothing after it plans again or edits the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError
from orchestrator.plan.deepspeed import deepspeed_config
from orchestrator.plan.plan import Plan, make_plan, refuse_unfit, resolved_config
from orchestrator.rundir.checkpoints import Checkpoint


@dataclass(frozen=True)
class Job:
    config: Config
    """What the workers run and config.yaml records: `auto` precision and `zero=auto` resolved."""
    plan: Plan
    deepspeed: dict
    resume_from: Checkpoint | None = None
    """The checkpoint this command continues from (None: a fresh start)."""
    notes: list[str] = field(default_factory=list)
    """Lines to show before training: zero=auto's reasons, a global batch kept on a new world size."""


def resolve(cfg: Config, find_resume: Callable[[Config], Checkpoint | None] | None = None) -> Job:
    """Plan cfg, refuse a plan that does not fit, and write its choices into the config. `find_resume` gets that
    config (what a checkpoint's config.yaml is compared with) and names the checkpoint to continue from, if any;
    the checkpoint's global batch is then kept on this world size."""
    plan = make_plan(cfg)
    refuse_unfit(cfg, plan)
    cfg = resolved_config(cfg, plan)
    notes = [f"zero=auto: {reason}" for reason in plan.auto_reasons]
    found = find_resume(cfg) if find_resume else None
    if found is not None:
        cfg, note = keep_global_batch(cfg, plan.world_size, found)
        if note:
            notes.append(note)
            plan = make_plan(cfg)
            refuse_unfit(cfg, plan)
    return Job(config=cfg, plan=plan, deepspeed=deepspeed_config(cfg, plan), resume_from=found, notes=notes)


def keep_global_batch(cfg: Config, world: int, found: Checkpoint) -> tuple[Config, str | None]:
    """cfg with train.grad_accum set so micro-batch x accum x workers is the checkpoint's global batch,
    and a line saying so when it changed; ConfigError with the numbers when no accum can."""
    t = cfg.train
    saved = found.meta.get("global_batch", t.micro_batch_size * t.grad_accum * world)
    per_accum = t.micro_batch_size * world
    if saved % per_accum:
        raise ConfigError([
            f"cluster.num_workers={world}: the checkpoint {found.path} trained with a global batch of {saved} "
            f"sequences, which micro_batch_size {t.micro_batch_size} x {world} workers = {per_accum} does not "
            f"divide; pick a worker count or train.micro_batch_size whose product divides {saved}"])
    accum = saved // per_accum
    if accum == t.grad_accum:
        return cfg, None
    note = (f"resume on {world} worker(s): grad_accum {t.grad_accum} -> {accum} keeps the global batch of {saved} "
            f"sequences (micro {t.micro_batch_size} x accum {accum} x {world})")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, grad_accum=accum)), note
