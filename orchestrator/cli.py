"""`orchestrator <command> [key=value ...]`: the one entry point.

Only argparse and the config layer are imported here, so `--help`, `plan` and config errors
answer in well under a second; torch, Ray and DeepSpeed load only when a job really starts.
Exit codes: 0 success, 1 the job failed, 2 bad input (nothing was started or written),
75 preempted (a checkpoint of the current step was written; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator import __version__
from orchestrator.errors import ConfigError, Preempted, TrainingError

_OVERRIDES_HELP = "Hydra overrides, e.g. model=gpt2-124m zero=3 train.max_steps=200 optim.lr=3e-4"


def _groups_epilog() -> str:
    from orchestrator.config.compose import groups

    lines = ["config groups (pick one with group=option):"]
    lines += [f"  {name:<9} {', '.join(options)}" for name, options in groups().items()]
    lines.append("top-level keys: train.* (seed, max_steps, micro_batch_size, grad_accum, seq_len, precision, "
                 "activation_checkpointing, grad_clip, log_every, eval_every, ckpt_every, keep_checkpoints, resume, "
                 "max_failures, collective_timeout_s), plan.* (format, force), run_dir")
    lines.append("print every key with its value: orchestrator train --cfg job")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Train transformer models with Ray Train + DeepSpeed, configured by Hydra.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_groups_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in (
        ("train", "compose the config, plan, run the job on the configured cluster, write the run dir"),
        ("plan", "print the plan (world size, batch, parameters, FLOPs, DeepSpeed config) without running"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary, epilog=_groups_epilog(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
        sub.add_argument("--cfg", choices=["job"], help="print the composed config and exit (as Hydra's --cfg job)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ConfigError.exit_code
    except TrainingError as error:
        print(f"error: training failed: {error}", file=sys.stderr)
        return TrainingError.exit_code
    except Preempted as error:
        print(f"preempted: {error}", file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from orchestrator.config.compose import compose, to_yaml

    cfg = compose(args.overrides)
    if args.cfg == "job":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "plan":
        return _plan(cfg)
    from orchestrator.train.driver import train

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


def _plan(cfg) -> int:
    from orchestrator.config.schema import PlanFormat
    from orchestrator.ds_config import deepspeed_config
    from orchestrator.plan import make_plan, resolved_config

    plan = make_plan(cfg)
    ds = deepspeed_config(resolved_config(cfg, plan), plan)
    if cfg.plan.format is PlanFormat.json:
        print(json.dumps({"plan": plan.to_dict(), "deepspeed": ds}, indent=2))
        return 0
    print(plan.describe())
    if plan.flops_per_token:
        print(f"flops/token={plan.flops_per_token:,}  flops/step={plan.flops_per_token * plan.tokens_per_step:,}")
    print(plan.memory_table())
    for reason in plan.auto_reasons:
        print(f"zero=auto: {reason}")
    print("deepspeed config:")
    print(json.dumps(ds, indent=2))
    return 0
