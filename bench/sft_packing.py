"""SFT with packing on vs off, side by side: reply tokens in the loss per second and validation loss.

    python bench/sft_packing.py                 # 4-layer GPT-2 shape, seq 512, 2 CPU workers, 40 steps each
    python bench/sft_packing.py --steps 80 --repeats 2

A length-skewed chat set (9 in 10 samples a short exchange, 1 in 10 a long multi-turn one, as real
instruction sets are) is fine-tuned from the same saved model twice per repeat, interleaved: packed
(`data.packing=true`: samples best-fit into rows of train.seq_len) and unpacked (`data.packing=false`: one
sample a row, each batch padded to its longest), the same steps, micro-batch and learning rate. Read from each
run's summary.json: `loss_tokens` over the steady training time (`wall_s`), and `final_val_loss` on the same
validation samples. Prints both and their ratios; exits 1 if packing gives less than 2x the reply tokens per
second or a validation loss more than 2% worse. Writes bench/sft-packing-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

WORDS = ("the model shards its optimizer states gradients and parameters across every rank while the "
         "activations stay local to each device so memory falls with the world size").split()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_samples(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(count):
            if rng.random() < 0.9:  # short: one question, a one-sentence reply
                messages = [{"role": "user", "content": _sentence(rng, rng.randint(4, 10))},
                            {"role": "assistant", "content": _sentence(rng, rng.randint(5, 12))}]
            else:  # long: several turns of paragraphs
                messages = []
                for _ in range(rng.randint(2, 4)):
                    messages += [{"role": "user", "content": _sentence(rng, rng.randint(15, 30))},
                                 {"role": "assistant", "content": " ".join(_sentence(rng, rng.randint(10, 20))
                                                                           for _ in range(rng.randint(2, 4)))}]
            out.write(json.dumps({"messages": messages}) + "\n")


def save_model(folder: Path, layers: int, hidden: int, seq_len: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import train_bpe

    tokenizer = train_bpe([" ".join(WORDS)] * 200, 512)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=seq_len, n_embd=hidden, n_layer=layers,
                        n_head=hidden // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def run(packing: bool, model: Path, data: Path, work: Path, args) -> dict:
    from orchestrator.config.compose import compose
    from orchestrator.train.driver import train

    run_dir = work / f"packing-{str(packing).lower()}-{len(list(work.glob('packing-*')))}"
    train(compose(["task=sft", f"model.pretrained_path={model}", "data=local", f"data.path={data}",
                   "data.chat_template=chatml", f"data.packing={str(packing).lower()}", "data.val_fraction=0.05",
                   f"train.seq_len={args.seq_len}", f"train.micro_batch_size={args.micro}",
                   f"train.max_steps={args.steps}", "optim.lr=1e-3", "optim.warmup_steps=4",
                   f"train.eval_every={args.steps}", "train.eval_batches=8", "train.log_every=10",
                   "train.ckpt_every=0", "logger.mode=disabled", f"run_dir={run_dir}"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"packing": packing, "loss_tokens": summary["loss_tokens"], "wall_s": summary["wall_s"],
            "loss_tokens_per_s": summary["loss_tokens"] / summary["wall_s"],
            "packing_efficiency": summary["packing_efficiency"], "final_val_loss": summary["final_val_loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sft-packing-"))
    model, data = work / "model", work / "chats.jsonl"
    save_model(model, args.layers, args.hidden, args.seq_len)
    write_samples(data, args.samples, seed=0)
    runs = []
    for _ in range(args.repeats):
        for packing in (True, False):
            runs.append(run(packing, model, data, work, args))
    packed = [r for r in runs if r["packing"]]
    unpacked = [r for r in runs if not r["packing"]]
    speed = (sum(r["loss_tokens_per_s"] for r in packed) / len(packed)) / (
        sum(r["loss_tokens_per_s"] for r in unpacked) / len(unpacked))
    val = (sum(r["final_val_loss"] for r in packed) / len(packed)) / (
        sum(r["final_val_loss"] for r in unpacked) / len(unpacked))
    for r in runs:
        print(f"packing={str(r['packing']).lower():5}  {r['loss_tokens']:>9,} reply tokens in {r['wall_s']:6.1f} s = "
              f"{r['loss_tokens_per_s']:8.1f}/s  rows {r['packing_efficiency']:.1%} samples  "
              f"val loss {r['final_val_loss']:.4f}")
    print(f"packed / unpacked: reply tokens per second {speed:.2f}x (target >= 2x), validation loss {val:.4f}x "
          f"(target <= 1.02x)")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(__file__).with_name(f"sft-packing-{device}.json")
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "speed_ratio": speed, "val_loss_ratio": val},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if speed >= 2 and val <= 1.02 else 1


if __name__ == "__main__":
    sys.exit(main())
