"""Distillation against plain training: a teacher trained by the tool, then a student of half its layers,
initialised from the teacher's every second layer, trained twice for the same steps, seed, data and learning
rate: with `task=distill` (the teacher's token distributions and the data) and with plain `task=clm` (the data
alone). Prints both validation losses and the teacher's; writes bench/distill-<device>.json.

    python bench/distill.py                 # about 3 minutes on 2 CPU cores
    python bench/distill.py --student-steps 100

Distillation is expected to end lower: the student learns from the teacher's whole distribution at every
position, not only from the one token the data has there. The bench exits 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = ["data.max_bytes=2000000", "train.seq_len=64", "train.micro_batch_size=8", "train.log_every=10",
          "logger.mode=disabled", "train.seed=0"]


def train(run_dir: Path, *overrides: str) -> dict:
    command = [sys.executable, "-m", "orchestrator", "train", *COMMON, *overrides, f"run_dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--teacher-layers", type=int, default=6)
    args = parser.parse_args()

    from orchestrator.config.compose import compose
    from orchestrator.models.student_init import student_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"teacher: {args.teacher_layers} layers, {args.teacher_steps} steps", flush=True)
        teacher = train(root / "teacher", "model=tiny", f"model.num_layers={args.teacher_layers}",
                        "data.vocab_size=512", f"train.max_steps={args.teacher_steps}",
                        f"train.eval_every={args.teacher_steps}")
        steps = [f"train.max_steps={args.student_steps}", f"train.eval_every={args.student_steps}"]
        print(f"student with task=distill: every second layer, {args.student_steps} steps", flush=True)
        distilled = train(root / "distill", "task=distill", f"distill.teacher_path={root / 'teacher'}",
                          "distill.init=teacher_layers", *steps)
        cache = Path(compose([]).data.cache_dir).expanduser()
        init = student_folder(root / "teacher" / "model", 2, cache)  # the folder the distill run started from
        print(f"student with task=clm: the same start ({init}), {args.student_steps} steps", flush=True)
        plain = train(root / "clm", f"model.pretrained_path={init}", *steps)
    result = {"teacher_val_loss": teacher["final_val_loss"], "teacher_layers": args.teacher_layers,
              "student_layers": (args.teacher_layers + 1) // 2, "student_steps": args.student_steps,
              "distill_val_loss": distilled["final_val_loss"], "clm_val_loss": plain["final_val_loss"],
              "device": distilled["device"]}
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / f"distill-{result['device']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"distillation {result['distill_val_loss']:.4f} vs plain training {result['clm_val_loss']:.4f} "
          f"(teacher {result['teacher_val_loss']:.4f}); written to {out}")
    return 0 if result["distill_val_loss"] < result["clm_val_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
