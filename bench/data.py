"""Data at scale, side by side in one run: preparation throughput on one core and on all of them, and a
rank's peak memory when training on the default corpus and on one 20 times larger.

    python bench/data.py --out bench/data-cpu.json
    python bench/data.py --skip-rss               # preparation only (a minute)

Preparation: the default corpus (the stdlib, 8 MB) prepared from an empty cache in a fresh process,
once held to one core (`taskset -c 0`: data.num_proc follows the affinity, so one process) and once
on every core. Reported: tokens/s of the tokenization phase (documents to the token shard) and of
the whole `prepare` (documents read, BPE trained, tokenized, split), and their ratios.

Memory: a 2-worker training run of the tiny model on the default corpus, and on a folder of text 20
times its size (the stdlib's .py files copied as .txt, round after round); each rank's peak RSS from
summary.json. Targets: tokenization >= 1.6x on 2 cores; peak RSS on 20x within 10% of 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_BYTES = 8_000_000

CHILD = """
import json, sys, time
from orchestrator.config.compose import compose
from orchestrator.data import pipeline, tokenize
from orchestrator.plan.plan import make_plan, resolved_config
from orchestrator.machine import available_cpus

phase = {}
inner = tokenize.Tokenization.into
def timed(*args, **kwargs):
    start = time.perf_counter()
    tokens = inner(*args, **kwargs)
    phase["tokenize_s"] = phase.get("tokenize_s", 0) + time.perf_counter() - start
    return tokens
tokenize.Tokenization.into = timed
cfg = compose(sys.argv[1:])
cfg = resolved_config(cfg, make_plan(cfg))
start = time.perf_counter()
prepared = pipeline.prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)
phase["prepare_s"] = time.perf_counter() - start
meta = prepared.meta
shard = prepared.root / "tokens.bin"
print(json.dumps({**phase, "tokens": meta["tokens"], "cores": available_cpus(),
                  "bytes_per_token": shard.stat().st_size / meta["tokens"], "dtype": meta["dtype"]}))
"""


def prepare_once(cache: Path, one_core: bool) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "ORCHESTRATOR_CACHE": str(cache)}
    command = [sys.executable, "-c", CHILD, "model=tiny", "logger.mode=disabled"]
    if one_core:
        command = ["taskset", "-c", "0", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"preparation failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["tokenize_tokens_per_s"] = row["tokens"] / row["tokenize_s"]
    row["prepare_tokens_per_s"] = row["tokens"] / row["prepare_s"]
    return row


def big_corpus(folder: Path, factor: int) -> int:
    """A folder of .txt files holding `factor` times the default corpus: the stdlib's sources, copied round after
    round (each round's copies are distinct files, so the tokenizer sees the same text distribution)."""
    import sysconfig

    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    folder.mkdir(parents=True, exist_ok=True)
    written, target, files = 0, factor * DEFAULT_BYTES, 0
    while written < target:
        for source in sources:
            if written >= target:
                break
            try:
                text = source.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            (folder / f"{files:06d}.txt").write_text(text)
            written, files = written + len(text.encode()), files + 1
    return written


def train_peak_rss(work: Path, name: str, data: list[str]) -> tuple[list[int], str]:
    """Each rank's peak RSS in a short training run, and the run's `data:` line."""
    run_dir = work / name
    command = [sys.executable, "-m", "orchestrator", "train", "model=tiny", *data, "train.max_steps=30",
               "train.micro_batch_size=8", "train.seq_len=128", "train.eval_every=0", "train.log_every=10",
               "train.ckpt_every=0", "logger.mode=disabled", f"run_dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"training on {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["peak_memory_bytes_per_rank"], next(line for line in result.stdout.splitlines()
                                                       if line.startswith("data: "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--factor", type=int, default=20, help="size of the large corpus, in default corpora")
    parser.add_argument("--skip-rss", action="store_true", help="measure preparation only")
    args = parser.parse_args()

    results: dict = {"machine": {"cores": len(os.sched_getaffinity(0))}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        print("preparing the default corpus on one core, then on all ...", flush=True)
        one = prepare_once(work / "cache-1", one_core=True)
        every = prepare_once(work / "cache-all", one_core=False)
        speedup = every["tokenize_tokens_per_s"] / one["tokenize_tokens_per_s"]
        results.update({
            "prepare_one_core": one, "prepare_all_cores": every,
            "tokenize_speedup_2proc": speedup,
            "prepare_speedup": every["prepare_tokens_per_s"] / one["prepare_tokens_per_s"],
            "bytes_per_token": every["bytes_per_token"],
        })
        print(f"{'':<12} {'cores':>5} {'tokens':>11} {'tokenize tok/s':>15} {'prepare s':>10} {'prepare tok/s':>14}")
        for label, row in (("one core", one), ("all cores", every)):
            print(f"{label:<12} {row['cores']:>5} {row['tokens']:>11,} {row['tokenize_tokens_per_s']:>15,.0f} "
                  f"{row['prepare_s']:>10.1f} {row['prepare_tokens_per_s']:>14,.0f}")
        print(f"tokenization speedup {speedup:.2f}x (target >= 1.6), whole preparation "
              f"{results['prepare_speedup']:.2f}x; {every['bytes_per_token']:.2f} bytes per token ({every['dtype']})")
        ok &= speedup >= 1.6 and every["bytes_per_token"] == 2

        if not args.skip_rss:
            corpus = work / "big"
            size = big_corpus(corpus, args.factor)
            print(f"training on the default corpus, then on {size / 1e6:.0f} MB ({args.factor}x) ...", flush=True)
            os.environ["ORCHESTRATOR_CACHE"] = str(work / "cache-train")
            start = time.perf_counter()
            small, small_data = train_peak_rss(work, "default", [])
            large, large_data = train_peak_rss(work, "large", ["data=local", f"data.path={corpus}"])
            ratio = max(large) / max(small)
            results.update({"rss_default_per_rank": small, "rss_20x_per_rank": large, "rss_ratio_20x": ratio,
                            "corpus_bytes_20x": size, "data_default": small_data, "data_20x": large_data,
                            "train_wall_s": time.perf_counter() - start})
            print(f"{small_data}\n{large_data}")
            print(f"peak RSS per rank: default {[f'{b / 1e6:.0f} MB' for b in small]}, "
                  f"{args.factor}x {[f'{b / 1e6:.0f} MB' for b in large]}: ratio {ratio:.3f} (target <= 1.10)")
            ok &= ratio <= 1.10
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
