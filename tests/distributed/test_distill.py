"""Distillation at ZeRO-3 in two real DeepSpeed processes: the teacher loads partitioned into an inference-only
engine (each rank holds half of it), the student learns its distribution, and the teacher's validation loss is
the same on both ranks. (`task=distill` through the command is tests/e2e/test_compress.py's recovery job.)"""

from __future__ import annotations

from tests.helpers import on_two_ranks


def _distill_on_rank(rank: int, teacher: str) -> tuple:
    import deepspeed
    import torch

    from orchestrator import tasks
    from orchestrator.config.compose import compose
    from orchestrator.plan.deepspeed import deepspeed_config
    from orchestrator.plan.plan import make_plan, resolved_config
    from orchestrator.train import engine as ds

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    cfg = compose(["task=distill", f"distill.teacher_path={teacher}", "model=tiny", "model.num_layers=1",
                   "zero=3", "train.precision=fp32", "cluster.num_workers=2", "train.micro_batch_size=4",
                   "optim.lr=3e-3", "optim.warmup_steps=0", "distill.alpha=1"])
    plan = make_plan(cfg)
    cfg = resolved_config(cfg, plan)
    ds_config = deepspeed_config(cfg, plan)
    task = tasks.for_config(cfg)
    sharded = ds.sharded_loading(ds_config, pretrained=True)  # as the worker does for a run with a teacher
    torch.manual_seed(0)
    vocab = cfg.model.vocab_size  # the teacher's
    student = task.build_model(cfg, {"vocab_size": vocab, "eos_token_id": 0})
    engine = ds.initialize(student, ds_config, lambda step: 1.0, 0.0)
    del sharded
    torch.manual_seed(rank)
    batch = torch.randint(0, vocab, (4, 32))
    distilled = []
    for _ in range(6):
        loss, _ = task.loss(engine, batch, task.loss_normalizer([batch], 1, 2))
        engine.backward(loss)
        engine.step()
        distilled.append(task.metrics()["distill_loss"])
    figures = task.evaluate(engine, [batch])
    report = task.final_report(engine, None, 4, rank, 2)
    return distilled, figures, report["teacher_param_bytes_per_rank"], report["teacher_param_bytes"]


def test_at_zero3_each_rank_holds_half_the_teacher_and_the_student_learns_from_it(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import train_bpe

    tokenizer = train_bpe(["the quick brown fox jumps over the lazy dog"] * 40, 300)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2,
                               n_head=4)).save_pretrained(str(tmp_path / "teacher"))
    tokenizer.save_pretrained(str(tmp_path / "teacher"))
    reported = on_two_ranks(_distill_on_rank, str(tmp_path / "teacher"))
    for rank, (distilled, figures, held, whole) in reported.items():
        assert held <= 0.55 * whole, rank  # half of the teacher, and a little padding
        assert distilled[-1] < distilled[0], distilled
        assert figures["teacher_val_loss"] == reported[0][1]["teacher_val_loss"] > 0  # reduced over the ranks
