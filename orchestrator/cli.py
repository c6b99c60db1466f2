"""`orchestrator <command> [key=value ...]`: the one entry point.

Only argparse and the config layer are imported here, so `--help`, `plan` and config errors
answer in well under a second; torch, Ray and DeepSpeed load only when a job really starts.
Exit codes: 0 success, 1 the job failed, 2 bad input (nothing was started or written),
75 preempted (a checkpoint of the current step was written; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator import __version__
from orchestrator.errors import ConfigError, GateFailed, Interrupted, Preempted, TrainingError

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
        ("submit", "render the launch artifact for cluster=ray|slurm|k8s into runs/<name>/ and submit it "
                   "(submit.dry_run=true only renders)"),
        ("compress", "prune and quantize a trained run's model, measure quality, size and speed before and after: "
                     "run_dir=runs/<name> compress=prune50|wanda50|prune_2of4|int8_dynamic|int4_weight|..."),
        ("sweep", "search hyperparameters: every trial is a whole training run (Hydra sweep grammar: "
                  "'optim.lr=tag(log,interval(1e-4,3e-2))' 'zero=2,3')"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary, epilog=_groups_epilog(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
        sub.add_argument("--cfg", choices=["job"], help="print the composed config and exit (as Hydra's --cfg job)")
        sub.add_argument("--config", metavar="FILE", help="start from a whole config file (a job.yaml or a run's "
                         "config.yaml) instead of conf/; then only key=value overrides apply")
        if name == "submit":
            sub.add_argument("--dry-run", action="store_true", help="same as submit.dry_run=true: render, print, "
                             "submit nothing")
        if name == "train":
            sub.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: comma lists "
                             "(optim.lr=1e-3,3e-3) become a grid sweep, one run directory per member")
        if name == "sweep":
            sub.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep from its folder")
        if name == "plan":
            sub.add_argument("--calibrate", metavar="RUN_DIR", help="use a finished run's measured step time, MFU "
                             "and checkpoint write speed instead of plan.assumed_mfu and the hardware preset's "
                             "(same model family and machines)")
    for name, summary in (
        ("status", "print a Ray job's status (cluster=ray submissions)"),
        ("logs", "print a Ray job's logs (--follow: until it ends)"),
        ("stop", "ask a Ray job to stop: it checkpoints at its next step, then exits"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("job_id", help="the id `orchestrator submit cluster=ray` printed")
        sub.add_argument("--address", metavar="URL",
                         help="Ray's Job Submission endpoint (default: RAY_ADDRESS, else http://127.0.0.1:8265)")
        if name == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    _compare_parser(commands)
    summary = "talk to a trained model with the chat template it was fine-tuned with (greedy by default)"
    sub = commands.add_parser("chat", help=summary, description=summary)
    sub.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its model/) or a model folder")
    sub.add_argument("--prompt", help="one message: print the reply and exit (default: read messages from stdin, "
                     "an empty line ends)")
    sub.add_argument("--max-new-tokens", type=int, default=128, help="longest reply in tokens (default: 128)")
    sub.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    summary = "label text with a task=classify run's model: the label and its probability"
    sub = commands.add_parser("predict", help=summary, description=summary)
    sub.add_argument("run_dir", metavar="RUN_DIR", help="a task=classify run directory (its model/) or a model folder")
    sub.add_argument("--text", help="one text to label")
    sub.add_argument("--text-pair", help="its second text, for a model trained on pairs (data.text_pair_field)")
    sub.add_argument("--file", metavar="IN", help="a JSONL, JSON or Parquet file of rows to label (the run's "
                     "data.text_field)")
    sub.add_argument("--out", metavar="OUT", help="with --file: the JSONL file its rows go to, each with "
                     "predicted_label and score")
    summary = ("keep a local Ray cluster running between commands (up), show it (status), end it (down): "
               "cluster=local commands join it instead of starting their own, seconds sooner")
    sub = commands.add_parser("cluster", help=summary, description=summary)
    sub.add_argument("action", choices=["up", "status", "down"])
    sub.add_argument("--num-cpus", type=int, help="CPUs the cluster offers (default: all this process may use)")
    return parser


def _compare_parser(commands) -> None:
    summary = ("compare runs and sweeps from their folders: a table of what differs, loss curves (--png), "
               "an HTML report (--html), a W&B report (--wandb-report)")
    sub = commands.add_parser("compare", help=summary, description=summary)
    sub.add_argument("paths", nargs="+", metavar="PATH", help="run directories, sweep directories (every trial), "
                     "or globs of them")
    sub.add_argument("--metric", help="metrics.jsonl column the runs are sorted by, best first (default: what the "
                     "sweep ranked by, else val_loss)")
    sub.add_argument("--mode", help="min or max: which end of --metric is best (default: the sweep's; else max "
                     "for an accuracy or F1, min for the rest)")
    sub.add_argument("--format", default="table", help="table (default), json or csv, for scripts")
    sub.add_argument("--png", nargs="?", const="", metavar="FILE", help="write train and val loss curves; "
                     "without FILE: <sweep>/compare.png for a sweep, else ./compare.png")
    sub.add_argument("--x", default="step", help="the curves' x axis: step (default) or tokens")
    sub.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (table, interactive "
                     "curves; for sweeps parallel coordinates and parameter importance)")
    sub.add_argument("--wandb-report", action="store_true", help="online: create a W&B report comparing the "
                     "runs (loss curves, parallel coordinates, parameter importance, run comparer)")


def main(argv: list[str] | None = None) -> int:
    """`argv` None: a command line, not a call from Python. The resident launcher may run it, and the process
    ends without Python's second of teardown (launch/process_exit.py)."""
    if argv is not None:
        return _command(argv)
    from orchestrator.launch.handover import hand_over
    from orchestrator.launch.process_exit import end_process

    code = hand_over(sys.argv)
    end_process(_command(None) if code is None else code)


def _command(argv: list[str] | None) -> int:
    parser = _parser()
    # Overrides may come after options (`submit --dry-run key=value`): argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return _run(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return ConfigError.exit_code
    except TrainingError as error:
        print(f"error: training failed: {error}", file=sys.stderr)
        return TrainingError.exit_code
    except GateFailed as error:
        print(f"error: gate failed: {error}", file=sys.stderr)
        return GateFailed.exit_code
    except Preempted as error:
        print(f"preempted: {error}", file=sys.stderr)
        return Preempted.exit_code
    except Interrupted as error:
        from orchestrator.launch.reaper import end_descendants

        end_descendants()  # what a half-finished start left (Ray's processes before its reaper runs)
        print(f"{error.signal_name}: stopped before training started; rerun the same command to start (or "
              "resume) the run", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(error.exit_code)  # not through the exit hooks: Ray's, after a start cut short, aborts
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `orchestrator plan | head`
        sys.stderr.close()
        return 0


def _run(args: argparse.Namespace) -> int:
    if args.command in ("status", "logs", "stop"):
        from orchestrator import cluster_commands

        return cluster_commands.ray_job(args.command, args.job_id, args.address, getattr(args, "follow", False))
    if args.command == "cluster":
        from orchestrator import cluster_commands

        return cluster_commands.cluster(args.action, args.num_cpus)
    if args.command == "chat":
        from orchestrator import chat_command

        return chat_command.run(args.run_dir, args.prompt, args.max_new_tokens, args.temperature)
    if args.command == "predict":
        from orchestrator import predict_command

        return predict_command.run(args.run_dir, args.text, args.text_pair, args.file, args.out)
    if args.command == "compare":
        from orchestrator.compare.command import Request, run

        return run(Request(paths=args.paths, metric=args.metric, mode=args.mode, format=args.format, png=args.png,
                           x=args.x, html=args.html, wandb_report=args.wandb_report))
    if args.command == "submit" and args.cfg is None:
        from orchestrator.submit import submit

        return submit([*args.overrides, *(["submit.dry_run=true"] if args.dry_run else [])], args.config)
    searching = args.command == "sweep" or getattr(args, "multirun", False)
    if searching and args.cfg is None:
        from orchestrator.sweep.driver import sweep

        return sweep(args.overrides, args.config, getattr(args, "resume", None))
    if args.command == "compress":
        from orchestrator.compress import command

        return command.run(args.overrides, args.config, args.cfg == "job")
    from orchestrator.config.compose import compose, to_yaml

    overrides = args.overrides
    if searching:  # --cfg job: the config every trial shares (the search space is not one config)
        from orchestrator.config.overrides import split_overrides

        overrides = split_overrides(overrides)[0]
    cfg = compose(overrides, args.config)
    if args.cfg == "job":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "plan":
        from orchestrator.plan import command

        return command.run(cfg, args.calibrate)
    from orchestrator import train_command

    train_command.run(cfg)
    return 0

