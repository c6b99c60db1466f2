"""Predicted vs measured per-rank model-state memory for every ZeRO stage, side by side.

    python bench/memory.py                    # ~60M-parameter GPT-2 shape, bf16, 2 CPU workers, 3 steps per stage
    python bench/memory.py --precision fp32   # fp32 (DeepSpeed keeps an extra fp32 master partition: 20Ψ/N at stage 3)
    python bench/memory.py --layers 12        # bigger (about 90M parameters)

For each of zero=0, 1, 2, 3, 3_offload it runs a real 2-worker job and reads summary.json:
`measured` is the bytes of parameter, gradient and optimizer-state tensors one rank holds
after a backward pass (train/memory_probe.py, summed from the tensors, not RSS); `predicted`
is the plan's figure (memory.py). Prints the ratio predicted/measured per stage and each
stage's measured bytes relative to stage 0, and exits 1 if a target is missed:
predicted within +-10% of measured for every stage, and ZeRO-3 <= 0.55 x stage 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

STAGES = ["0", "1", "2", "3", "3_offload"]


def run_stage(zero: str, layers: int, hidden: int, precision: str, work: Path) -> dict:
    from orchestrator.config.compose import compose
    from orchestrator.train.driver import train

    run_dir = work / f"zero{zero}"
    cfg = compose([
        f"zero={zero}", "model=tiny", f"model.num_layers={layers}", f"model.hidden_size={hidden}",
        "model.num_heads=12", f"train.precision={precision}", "train.max_steps=3", "train.micro_batch_size=1",
        "train.seq_len=64", "train.eval_batches=1", "train.log_every=1", "logger.mode=disabled",
        "data.max_bytes=2000000", f"run_dir={run_dir}",
    ])
    train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # GBs each; not needed here
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 is the mixed-precision case the ZeRO paper's figures describe")
    args = parser.parse_args()

    from orchestrator.config.schema import ClusterConfig
    from orchestrator.launch import local

    local.start(ClusterConfig(num_workers=2, cpus_per_worker=1))  # one Ray cluster for every stage
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for zero in STAGES:
            summary = run_stage(zero, args.layers, args.hidden, args.precision, Path(tmp))
            measured = max(rank["total"] for rank in summary["measured_model_state_bytes_per_rank"])
            rows.append((zero, summary["params"], summary["predicted_model_state_bytes_per_rank"], measured))
    local.stop()

    stage0 = rows[0][3]
    print(f"\nmodel: GPT-2 shape, {args.layers} layers x {args.hidden} wide, {rows[0][1] / 1e6:.1f}M parameters, "
          f"2 workers, {args.precision}, CPU")
    print(f"{'zero':<10} {'predicted GB':>13} {'measured GB':>12} {'pred/meas':>10} {'meas/stage0':>12}")
    ok = True
    for zero, _params, predicted, measured in rows:
        ratio = predicted / measured
        ok &= abs(ratio - 1) <= 0.10
        print(f"{zero:<10} {predicted / 1e9:>13.3f} {measured / 1e9:>12.3f} {ratio:>10.3f} {measured / stage0:>12.3f}")
    zero3 = rows[3][3] / stage0
    ok &= zero3 <= 0.55
    print(f"\ntargets: predicted/measured within 1 +- 0.10 for every stage; zero=3 / zero=0 = {zero3:.3f} <= 0.55")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
