"""The memory a pretrained model's load adds per rank, ZeRO-2 (every rank loads it whole) against ZeRO-3 (each
rank reads only its partitions: models/partitioned_load.py), side by side.

    python bench/sharded_load.py              # a 63M-parameter GPT-2 folder, 2 CPU workers, 1 step per stage
    python bench/sharded_load.py --layers 12  # bigger

Saves a GPT-2-shaped model with random weights (fp32 safetensors) and its tokenizer, then runs
`orchestrator train model.pretrained_path=<folder> train.max_steps=1` at zero=2 and zero=3, interleaved, and
reads each rank's `load_memory_bytes_per_rank` from summary.json (the peak resident set the load added above
the one before it, with every weight read once so a lazily mapped checkpoint counts: train/memory_probe.py).
Prints both and the ratio; exits 1 above the target of 0.6x. Writes bench/sharded-load-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def save_model(folder: Path, layers: int, hidden: int) -> int:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import train_bpe

    tokenizer = train_bpe(["a corpus for the benchmark's tokenizer"] * 100, 8192)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=8192, n_positions=128, n_embd=hidden, n_layer=layers,
                                       n_head=hidden // 64))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def load_memory(zero: str, model: Path, work: Path, index: int) -> list[int]:
    from orchestrator.config.compose import compose
    from orchestrator.train.driver import train

    run_dir = work / f"zero{zero}-{index}"
    train(compose([f"model.pretrained_path={model}", f"zero={zero}", "train.max_steps=1", "train.micro_batch_size=1",
                   "train.seq_len=64", "train.eval_batches=1", "train.eval_every=0", "data.max_bytes=300000",
                   "logger.mode=disabled", f"run_dir={run_dir}"]))
    return json.loads((run_dir / "summary.json").read_text())["load_memory_bytes_per_rank"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sharded-load-"))
    params = save_model(work / "model", args.layers, args.hidden)
    figures: dict[str, list[int]] = {"2": [], "3": []}
    for index in range(args.repeats):
        for zero in ("2", "3"):
            figures[zero] += load_memory(zero, work / "model", work, index)
    worst = {zero: max(values) for zero, values in figures.items()}
    ratio = worst["3"] / worst["2"]
    print(f"model: {params / 1e6:.1f}M parameters, {params * 4 / 1e6:.0f} MB in fp32")
    for zero, values in figures.items():
        print(f"zero={zero}: load added {', '.join(f'{v / 1e6:.0f} MB' for v in values)} per rank")
    print(f"zero=3 / zero=2, the largest rank's: {ratio:.2f}x (target <= 0.6x)")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(__file__).with_name(f"sharded-load-{device}.json")
    out.write_text(json.dumps({"args": vars(args), "params": params, "load_memory_bytes_per_rank": figures,
                               "ratio": ratio}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if ratio <= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
