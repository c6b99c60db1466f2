"""What the checkpoint hashes cost: sha256 time against save time, on a 124M model's checkpoint.

    python bench/checkpoint_integrity.py                 # GPT-2 124M, ZeRO-2, fp32, 2 CPU workers (~3 min)
    python bench/checkpoint_integrity.py --zero 3 --out integrity.json

It trains 12 steps with a checkpoint every 4, then reads each checkpoint's manifest
(train/checkpoint_writer.py records the times): `save_s` is the DeepSpeed save plus the per-rank
state (every rank, between two barriers); `hash_s` the ranks hashing their shares in background
threads while training goes on; `hash_wait_s` how long the steps waited for those hashes (at the
seal; the final checkpoint always waits, it is sealed before the command ends). The cost to
training is the wait: the bench prints wait/save per checkpoint and exits 1 if the median of the
checkpoints before the last is 10% or more. It also times `checkpoint.problem(verify=True)`,
the check a resume makes, in this process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-124m")
    parser.add_argument("--zero", default="2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from orchestrator.config.compose import compose
    from orchestrator.rundir import checkpoints as checkpoint
    from orchestrator.train.driver import train

    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as work:
        run_dir = Path(work) / "run"
        train(compose([f"model={args.model}", f"zero={args.zero}", "train.precision=fp32", "train.max_steps=12",
                       "train.ckpt_every=4", "train.keep_checkpoints=3", "train.micro_batch_size=1",
                       "train.seq_len=128", "train.eval_every=0", "train.log_every=1", "train.eval_batches=1",
                       "logger.mode=disabled",
                       "data.max_bytes=2000000", f"run_dir={run_dir}"]))
        step_s = {row["step"]: 1 / row["tokens_per_s"] for row in map(json.loads,
                  (run_dir / "metrics.jsonl").read_text().splitlines())}  # seconds per token: relative step time
        rows = []
        for path in sorted((run_dir / "checkpoints").glob("step_*")):
            manifest = json.loads((path / checkpoint.MANIFEST).read_text())
            step = manifest["step"]
            quiet = [v for s, v in step_s.items() if s > 2 and s - 1 not in (4, 8) and s - 2 not in (4, 8)]
            after = [step_s[s] for s in (step + 1, step + 2) if s in step_s]  # the steps the hashing overlapped
            slower = sum(after) / len(after) / statistics.median(quiet) - 1 if after else None
            started = time.perf_counter()
            assert checkpoint.problem(path, verify=True) is None
            verify_s = time.perf_counter() - started
            rows.append({"checkpoint": path.name, "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                         "save_s": manifest["save_s"], "hash_s": manifest["hash_s"],
                         "hash_wait_s": manifest["hash_wait_s"], "verify_s": verify_s,
                         "next_two_steps_slower_by": slower,
                         "ratio_wait_to_save": manifest["hash_wait_s"] / manifest["save_s"]})
    print("| checkpoint | size | save | hashing (background, 2 ranks) | steps waited | waited / save | "
          "next 2 steps slower by | verify on resume |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        slower = "-" if row["next_two_steps_slower_by"] is None else f"{row['next_two_steps_slower_by']:+.1%}"
        print(f"| {row['checkpoint']} | {row['bytes'] / 1e9:.2f} GB | {row['save_s']:.2f} s | {row['hash_s']:.2f} s | "
              f"{row['hash_wait_s']:.3f} s | {row['ratio_wait_to_save']:.3f} | {slower} | {row['verify_s']:.2f} s |")
    median = statistics.median(row["ratio_wait_to_save"] for row in rows[:-1])
    print(f"median waited / save, before the final checkpoint: {median:.3f} (target < {TARGET})")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "zero": args.zero, "rows": rows,
                                        "median_ratio_wait_to_save": median}, indent=2))
    return 0 if median < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
