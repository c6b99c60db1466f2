"""The orchestrator against a bare torchrun + DeepSpeed script on the same job, interleaved in one run.

    python bench/throughput.py                                   # the default job: tiny GPT-2, ZeRO-2, 200 steps
    python bench/throughput.py --pairs 5 --out bench/throughput.json
    python bench/throughput.py --model gpt2-124m --zero 3 --steps 50      # on a GPU machine; also llama-1b

Each pair runs, one after another: (a) `orchestrator train` starting its own Ray cluster (cold, as the
default job does), (b) bench/bare_deepspeed.py under torchrun (same model, token blocks, DeepSpeed
config, seed and LR schedule), (c) `orchestrator train` run by the resident launchers of a warm cluster
(`orchestrator cluster up`, started once before the pairs with a cache folder of its own, so the cold runs
do not join it; then one job, not timed, which has the launcher of its ranks' environment started and waits
for it: its time to the first step is reported apart as `first_job_after_up_s`). Per run: steady tokens/s (median of
the 10-step windows after the first, so warm-up is left out), time from process start to the end of the first optimizer
step, the command's wall time, peak memory per rank, MFU. Prints a markdown table (medians with min and
max, ratios orchestrated / bare) and the orchestrated runs' start-up breakdown; --out writes the JSON:
ratio_steady_tokens_per_s, ratio_time_to_first_step (warm), ratio_time_to_first_step_cold, ratio_wall_s,
exit_after_finished_s_cold and _warm (from the run's `finished` event, written after its final evaluation,
checkpoint and export, to the command's exit), and `pairs` with every run's figures. Targets (issues 13 and 31):
steady ratio >= 0.99, warm start <= 1.5, cold start <= 2.0, exit within 2 s of the last step's work; the exit
code is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"ratio_steady_tokens_per_s": (">=", 0.99), "ratio_time_to_first_step": ("<=", 1.5),
           "ratio_time_to_first_step_cold": ("<=", 2.0), "exit_after_finished_s_cold": ("<=", 2.0),
           "exit_after_finished_s_warm": ("<=", 2.0)}
METRICS = [("steady_tokens_per_s", "steady tokens/s", "{:,.0f}"), ("time_to_first_step_s", "time to first step (s)",
           "{:.1f}"), ("wall_s", "whole command (s)", "{:.1f}"), ("peak_memory_gb", "peak memory per rank (GB)",
           "{:.2f}"), ("mfu", "MFU", "{:.1%}")]


def overrides(args) -> list[str]:
    return [f"model={args.model}", f"zero={args.zero}", f"train.max_steps={args.steps}", "train.log_every=10",
            f"cluster.num_workers={args.workers}", *args.override]


def bare_spec(args, work: Path) -> tuple[Path, dict]:
    """The bare script's inputs, derived from the same composed config the orchestrated run uses."""
    import numpy as np

    from orchestrator.config.compose import compose
    from orchestrator.data.pipeline import prepare
    from orchestrator.models.registry import hf_config
    from orchestrator.plan.deepspeed import deepspeed_config
    from orchestrator.plan.plan import make_plan, resolved_config

    cfg = compose(overrides(args))
    plan = make_plan(cfg)
    cfg = resolved_config(cfg, plan)
    data = prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)
    blocks = work / "train_blocks.npy"
    train = data.blocks("train")
    np.save(blocks, train[:].numpy())
    meta = data.meta
    spec = {
        "model_config": hf_config(cfg.model, meta["vocab_size"], cfg.train.seq_len, meta["eos_token_id"]).to_dict(),
        "ds_config": deepspeed_config(cfg, plan),
        "train_blocks": str(blocks),
        "micro_batch_size": cfg.train.micro_batch_size,
        "max_steps": cfg.train.max_steps,
        "log_every": 10,
        "seed": cfg.train.seed,
        "threads": cfg.cluster.cpus_per_worker,
        "warmup_steps": cfg.optim.warmup_steps,
        "min_lr_ratio": cfg.optim.min_lr_ratio,
        "result": str(work / "bare-result.json"),
    }
    path = work / "bare-spec.json"
    path.write_text(json.dumps(spec))
    return path, {"flops_per_token": plan.flops_per_token, "uses_gpus": plan.uses_gpus}


def run_orchestrated(args, work: Path, name: str, warm_cache: Path | None = None) -> dict:
    """One `orchestrator train`; with `warm_cache`, as a command of the warm cluster kept there."""
    from orchestrator.launch.warm import cache_root

    run_dir = work / name
    env = {**os.environ, **({"ORCHESTRATOR_CACHE": str(warm_cache)} if warm_cache else {})}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "orchestrator", "train", *overrides(args), f"run_dir={run_dir}",
                           f"data.cache_dir={cache_root()}"],  # both kinds read the same prepared data
                          capture_output=True, text=True, cwd=ROOT, env=env)
    ended = time.time()
    wall = ended - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"steady_tokens_per_s": summary["tokens_per_s"],
            "time_to_first_step_s": summary["startup"]["time_to_first_step_s"],
            "wall_s": wall,
            "peak_memory_gb": max(summary["peak_memory_bytes_per_rank"]) / 1e9,
            "mfu": summary["mfu"],
            "peak_flops_per_device": summary["peak_flops_per_device"],
            "startup": summary["startup"],
            "exit_after_finished_s": ended - _finished_at(run_dir)}


def _finished_at(run_dir: Path) -> float:
    from orchestrator.rundir import RunDir

    return next(event["time"] for event in reversed(RunDir(run_dir).events()) if event["event"] == "finished")


def run_bare(args, spec: Path, known: dict, peak_flops: float) -> dict:
    from orchestrator.plan.mfu import utilization
    from orchestrator.train.engine import extensions_dir

    # DeepSpeed's ops from the same folder the orchestrated runs load them from: neither side builds them
    env = {**os.environ, "OMP_NUM_THREADS": str(json.loads(spec.read_text())["threads"]),
           "TORCH_EXTENSIONS_DIR": str(extensions_dir())}
    if not known["uses_gpus"]:
        env["DS_ACCELERATOR"] = "cpu"
    result = Path(json.loads(spec.read_text())["result"])
    result.unlink(missing_ok=True)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={args.workers}", str(ROOT / "bench" / "bare_deepspeed.py"), str(spec)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - started
    if not result.exists():  # (a crash after the result was written, in a rank's teardown, is only reported)
        raise SystemExit(f"bare run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if done.returncode != 0:
        print(f"note: the bare run exited {done.returncode} after writing its result: "
              f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}", flush=True)
    figures = json.loads(result.read_text())
    windows = figures["window_tokens_per_s"]
    steady = statistics.median(windows[1:] or windows)
    return {"steady_tokens_per_s": steady,
            "time_to_first_step_s": figures["first_step_at"] - started,
            "wall_s": wall,
            "peak_memory_gb": max(figures["peak_memory_bytes_per_rank"]) / 1e9,
            "mfu": utilization(known["flops_per_token"], steady, peak_flops, figures["world_size"]),
            "device": figures["device"]}


def warm_cluster(action: str, cache: Path) -> None:
    subprocess.run([sys.executable, "-m", "orchestrator", "cluster", action], check=True, capture_output=True,
                   cwd=ROOT, env={**os.environ, "ORCHESTRATOR_CACHE": str(cache)})


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--zero", default="2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("override", nargs="*", help="more key=value overrides for both runs (e.g. train.seq_len=512)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    from orchestrator.launch import warm

    if warm.running():
        raise SystemExit("a warm local cluster runs (`orchestrator cluster down` first): the cold runs would join it")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        spec, known = bare_spec(args, work)
        warm_cache = work / "warm-cache"
        warm_cluster("up", warm_cache)
        try:
            first = run_orchestrated(args, work, "warm-first", warm_cache)
            print(f"first job after `cluster up`: {first['time_to_first_step_s']:.1f}s to the first step", flush=True)
            pairs = run_pairs(args, work, spec, known, warm_cache)
        finally:
            warm_cluster("down", warm_cache)
    report = summarize(pairs, args)
    report["first_job_after_up_s"] = first["time_to_first_step_s"]
    print(table(report))
    print(f"first job after `cluster up` (its ranks wait for the launcher it has started): "
          f"{first['time_to_first_step_s']:.1f}s to the first step")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    missed = [f"{key}={report[key]:.3f} (target {op} {bound})" for key, (op, bound) in TARGETS.items()
              if not (report[key] >= bound if op == ">=" else report[key] <= bound)]
    if missed:
        print("missed: " + "; ".join(missed))
    return 1 if missed else 0


def run_pairs(args, work: Path, spec: Path, known: dict, warm_cache: Path) -> list[dict]:
    pairs = []
    for i in range(args.pairs):
        cold = run_orchestrated(args, work, f"cold-{i}")
        print(f"pair {i + 1}/{args.pairs}: orchestrated (cold) {cold['time_to_first_step_s']:.1f}s to the first "
              f"step, {cold['steady_tokens_per_s']:,.0f} tok/s", flush=True)
        bare = run_bare(args, spec, known, cold["peak_flops_per_device"])
        print(f"pair {i + 1}/{args.pairs}: bare {bare['time_to_first_step_s']:.1f}s, "
              f"{bare['steady_tokens_per_s']:,.0f} tok/s", flush=True)
        warm_run = run_orchestrated(args, work, f"warm-{i}", warm_cache)
        print(f"pair {i + 1}/{args.pairs}: orchestrated (warm) {warm_run['time_to_first_step_s']:.1f}s, "
              f"{warm_run['steady_tokens_per_s']:,.0f} tok/s", flush=True)
        pairs.append({"orchestrated_cold": cold, "bare": bare, "orchestrated_warm": warm_run})
    return pairs


def summarize(pairs: list[dict], args) -> dict:
    def median_of(kind: str, key: str) -> float:
        return statistics.median(pair[kind][key] for pair in pairs)

    figures = {kind: {key: stats([pair[kind][key] for pair in pairs]) for key, _, _ in METRICS}
               for kind in ("orchestrated_cold", "orchestrated_warm", "bare")}
    breakdown = {kind: {phase: statistics.median(pair[kind]["startup"][phase] for pair in pairs)
                        for phase in pairs[0][kind]["startup"]}
                 for kind in ("orchestrated_cold", "orchestrated_warm")}
    return {
        "job": {"model": args.model, "zero": args.zero, "steps": args.steps, "workers": args.workers,
                "overrides": args.override, "device": pairs[0]["bare"]["device"]},
        "ratio_steady_tokens_per_s": median_of("orchestrated_cold", "steady_tokens_per_s")
        / median_of("bare", "steady_tokens_per_s"),
        "ratio_time_to_first_step": median_of("orchestrated_warm", "time_to_first_step_s")
        / median_of("bare", "time_to_first_step_s"),
        "ratio_time_to_first_step_cold": median_of("orchestrated_cold", "time_to_first_step_s")
        / median_of("bare", "time_to_first_step_s"),
        "ratio_wall_s": median_of("orchestrated_cold", "wall_s") / median_of("bare", "wall_s"),
        "exit_after_finished_s_cold": median_of("orchestrated_cold", "exit_after_finished_s"),
        "exit_after_finished_s_warm": median_of("orchestrated_warm", "exit_after_finished_s"),
        "figures": figures,
        "startup_breakdown_s": breakdown,
        "pairs": pairs,
    }


def table(report: dict) -> str:
    def cell(figure: dict, fmt: str) -> str:
        return f"{fmt.format(figure['median'])} ({fmt.format(figure['min'])}-{fmt.format(figure['max'])})"

    f = report["figures"]
    lines = [f"job: {report['job']}", "",
             "| metric | orchestrated, cold | orchestrated, warm cluster | bare torchrun + DeepSpeed | cold / bare "
             "| warm / bare |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label, fmt in METRICS:
        cold, warm_, bare = (f[kind][key] for kind in ("orchestrated_cold", "orchestrated_warm", "bare"))
        lines.append(f"| {label} | {cell(cold, fmt)} | {cell(warm_, fmt)} | {cell(bare, fmt)} | "
                     f"{cold['median'] / bare['median']:.2f} | {warm_['median'] / bare['median']:.2f} |")
    lines += ["", "start-up breakdown, orchestrated (median s): "]
    for kind, phases in report["startup_breakdown_s"].items():
        lines.append(f"- {kind.split('_')[1]}: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in phases.items()))
    lines.append(f"exit after the `finished` event (median s): cold {report['exit_after_finished_s_cold']:.1f}, "
                 f"warm {report['exit_after_finished_s_warm']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
