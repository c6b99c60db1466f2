"""Time to the first step of the default job: this checkout against another one, cold starts interleaved.

    python bench/startup_ab.py --baseline /tmp/old-checkout --baseline-python /tmp/old-venv/bin/python
    python bench/startup_ab.py --baseline ... --pairs 5 --out bench/startup-ab.json

Start-up changes are a few seconds against run-to-run noise of as much again on a shared machine (the same
cold start measured 14.6 s to 20.7 s within one hour), so before/after figures from two separate benchmark
runs do not compare. This alternates the two checkouts' `orchestrator train` (each with its own Python, so
each imports its own code), pair by pair, on the default job cut to a few steps, and prints the medians
(min-max) of the time to the first step, its phases (`summary.json`'s `startup`) and the whole command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cold_start(python: str, root: Path, run_dir: Path, steps: int) -> dict:
    started = time.time()
    done = subprocess.run([python, "-m", "orchestrator", "train", f"train.max_steps={steps}", f"run_dir={run_dir}"],
                          capture_output=True, text=True, cwd=root)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{root} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    startup = json.loads((run_dir / "summary.json").read_text())["startup"]
    return {**startup, "wall_s": wall}


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--baseline-python", required=True, help="the Python that has that checkout installed")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write every run's figures as JSON here")
    args = parser.parse_args()
    sides = {"baseline": (args.baseline_python, args.baseline.resolve()), "this checkout": (sys.executable, ROOT)}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="startup-ab-") as work:
        for pair in range(args.pairs):
            for name, (python, root) in (sides.items() if pair % 2 == 0 else reversed(sides.items())):
                figures = cold_start(python, root, Path(work) / f"{name.replace(' ', '-')}-{pair}", args.steps)
                runs[name].append(figures)
                print(f"pair {pair + 1}/{args.pairs}: {name}: first step {figures['time_to_first_step_s']:.1f}s, "
                      f"command {figures['wall_s']:.1f}s", flush=True)
    phases = [key for key in runs["this checkout"][0] if key.endswith("_s") and key != "wall_s"]
    print("\n| seconds | " + " | ".join(sides) + " | this / baseline |\n| --- | --- | --- | --- |")
    for key in [*phases, "wall_s"]:
        values = {name: [run.get(key, 0.0) for run in runs[name]] for name in sides}
        base, ours = (statistics.median(values[name]) for name in sides)
        ratio = f"{ours / base:.2f}" if base else ""
        print(f"| {key[:-2].replace('_', ' ')} | " + " | ".join(median_range(values[name]) for name in sides)
              + f" | {ratio} |")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
