"""Classification parity: a plain transformers + torch fine-tune (no orchestrator code) against `orchestrator
train task=classify` on 2 workers, from the same pretrained folder, data, seed, learning-rate schedule, batch
and epochs; their test accuracies must be within 2 points.

    python bench/classify_parity.py             # ~3 minutes on 2 CPU cores
    python bench/classify_parity.py --epochs 4

The data: film reviews of three labels, each told by a word among fillers, with 15% of the labels (train and
test) replaced at random, so no model can reach 100% and the accuracies say something. The folder: a bare
BertModel (random weights) and a WordPiece tokenizer, saved with save_pretrained. Both sides use AdamW (betas
0.9/0.95, weight decay 0.1 on matrices only), linear warmup then cosine decay to 0.1x, gradient clipping at 1.0,
the same global batch, rows padded to each batch's longest. Prints both accuracies and wall times; writes
bench/classify-parity-<device>.json; exits 1 when they differ by more than 2 points.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = {"positive": ["great", "wonderful", "loved", "excellent", "fun"],
         "negative": ["awful", "boring", "hated", "terrible", "dull"],
         "neutral": ["okay", "average", "fine", "plain", "usual"]}
FILLER = ["the", "movie", "was", "a", "plot", "actors", "story", "film", "it", "really", "quite", "and"]


def rows(count: int, seed: int, noise: float) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choice(sorted(WORDS))
        text = " ".join(rng.sample(FILLER, 5) + [rng.choice(WORDS[label])] + rng.sample(FILLER, 3))
        out.append({"text": text, "label": rng.choice(sorted(WORDS)) if rng.random() < noise else label})
    return out


def save_folder(folder: Path, texts: list[str]) -> None:
    import torch
    from transformers import BertConfig, BertModel

    from orchestrator.data.tokenizer import train_wordpiece  # the tokenizer only: both sides load it from the folder

    tokenizer = train_wordpiece(texts, 300)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def plain(folder: Path, train: list[dict], test: list[dict], args) -> tuple[float, float]:
    """transformers + torch alone: (test accuracy, wall seconds)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    labels = sorted({row["label"] for row in train})
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in name]
    rest = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in name)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    steps = math.ceil(args.epochs * len(train) / args.batch)
    warmup = args.warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    model.train()
    for _ in range(steps):
        if len(order) < args.batch:
            order += torch.randperm(len(train), generator=generator).tolist()
        batch, order = [train[i] for i in order[:args.batch]], order[args.batch:]
        inputs = tokenizer([row["text"] for row in batch], truncation=True, max_length=32, padding=True,
                           return_tensors="pt")
        loss = model(**inputs, labels=torch.tensor([labels.index(row["label"]) for row in batch])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 64):
            chunk = test[i:i + 64]
            inputs = tokenizer([row["text"] for row in chunk], truncation=True, max_length=32, padding=True,
                               return_tensors="pt")
            predicted = model(**inputs).logits.argmax(dim=-1).tolist()
            correct += sum(labels[p] == row["label"] for p, row in zip(predicted, chunk, strict=True))
    return correct / len(test), time.perf_counter() - start


def orchestrated(folder: Path, files: dict[str, Path], work: Path, args) -> tuple[float, float]:
    """`orchestrator train task=classify` on 2 workers: (test accuracy, wall seconds of the command)."""
    run_dir = work / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator", "train", "task=classify",
                    f"model.pretrained_path={folder}", "data=local", f"data.path={files['train']}",
                    f"data.val_path={files['dev']}", f"data.test_path={files['test']}", f"data.cache_dir={work}",
                    "train.seq_len=32", f"train.micro_batch_size={args.batch // 2}", "cluster.num_workers=2",
                    f"train.epochs={args.epochs}", "train.eval_every=0", f"optim.lr={args.lr}",
                    f"optim.warmup_steps={args.warmup}", f"train.seed={args.seed}", "logger.mode=disabled",
                    f"run_dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return json.loads((run_dir / "summary.json").read_text())["test_accuracy"], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch", type=int, default=32, help="global batch (the orchestrator: 2 workers x half)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="classify-parity-"))
    data = {"train": rows(2000, 0, 0.15), "dev": rows(200, 1, 0.15), "test": rows(600, 2, 0.15)}
    files = {}
    for name, split in data.items():
        files[name] = work / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(row) + "\n" for row in split))
    save_folder(work / "bert", [row["text"] for row in data["train"]])
    ours, ours_s = orchestrated(work / "bert", files, work, args)
    theirs, theirs_s = plain(work / "bert", data["train"], data["test"], args)
    gap = abs(ours - theirs) * 100
    print(f"test accuracy: orchestrator (2 workers) {ours:.1%} in {ours_s:.0f} s; plain transformers + torch "
          f"(1 process) {theirs:.1%} in {theirs_s:.0f} s; gap {gap:.1f} points (target <= 2)")
    import torch

    out = Path(__file__).with_name(f"classify-parity-{'cuda' if torch.cuda.is_available() else 'cpu'}.json")
    out.write_text(json.dumps({"args": vars(args), "orchestrator": {"test_accuracy": ours, "wall_s": ours_s},
                               "plain": {"test_accuracy": theirs, "wall_s": theirs_s}, "gap_points": gap},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if gap <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
