"""Knowledge distillation (`task=distill`): the student trains on a frozen teacher's token distributions and on
the data's next tokens, loss = alpha x T^2 x D(teacher, student at temperature T) + (1 - alpha) x cross-entropy,
D being forward KL, reverse KL or Jensen-Shannon (the GKD paper's generalized JSD, as TRL computes it). The
data, the inputs, the validation and the export are those of the student's data task (tasks/clm.py or
tasks/sft.py, by distill.data); the teacher (models/teacher.py) is partitioned at ZeRO-3 and whole at stages 0-2.

Reported: distill_loss and data_loss (means over the micro-batches since the previous log), val_loss (the
student's cross-entropy), and teacher_val_loss, the teacher's on the same validation set, computed once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator.config.schema import Config, DistillData, DistillInit, DistillLoss

_BETA = {DistillLoss.forward_kl: 0.0, DistillLoss.reverse_kl: 1.0, DistillLoss.jsd: 0.5}
"""The generalized JSD's beta: 0 is KL(teacher || student), 1 is KL(student || teacher), 0.5 Jensen-Shannon."""


class Distillation:
    name = "distill"

    def __init__(self, cfg: Config) -> None:
        if cfg.distill.data is DistillData.sft:
            from orchestrator.tasks.sft import SupervisedFineTuning

            self.student_task = SupervisedFineTuning()
        else:
            from orchestrator.tasks.clm import CausalLM

            self.student_task = CausalLM()
        self.distill = cfg.distill
        self.sums = None  # on the device: distillation loss, data loss, micro-batches since the last log
        self.logged: dict[str, float] = {}
        self.teacher = None
        self.teacher_val: dict[str, float] | None = None
        self.student_init: Path | None = None

    def prepare_data(self, cfg: Config):
        from orchestrator.config.distill_checks import teacher_folder
        from orchestrator.models.student_init import student_folder

        if cfg.distill.init is DistillInit.teacher_layers:
            self.student_init = student_folder(teacher_folder(cfg), cfg.distill.layer_stride,
                                               Path(cfg.data.cache_dir).expanduser())
        return self.student_task.prepare_data(cfg)

    def build_model(self, cfg: Config, meta: dict):
        import dataclasses

        from orchestrator.config.distill_checks import teacher_folder
        from orchestrator.models import teacher

        if self.student_init is not None:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained_path=str(self.student_init)))
        student = self.student_task.build_model(cfg, meta)
        self.teacher = teacher.load(teacher_folder(cfg), cfg.train.precision, cfg.model.attn_implementation.value)
        return student

    def model_inputs(self, batch) -> dict:
        return self.student_task.model_inputs(batch)

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int):
        return self.student_task.validation_batches(blocks, batch_size, rank, world, limit)

    def loss_normalizer(self, batches: list, grad_accum: int, world: int):
        return self.student_task.loss_normalizer(batches, grad_accum, world)

    def loss(self, engine, batch, normalizer):
        import torch

        inputs = self.model_inputs(batch)
        counted = {} if normalizer is None else {"num_items_in_batch": normalizer}
        out = engine(**inputs, **counted)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        labels = inputs["labels"][:, 1:]  # the logits at position t predict token t + 1
        tokens = normalizer if normalizer is not None else (labels != -100).sum().clamp(min=1)
        d = self.distill
        kd = divergence(out.logits[:, :-1], teacher_logits[:, :-1], labels, _BETA[d.loss], d.temperature,
                        tokens) * d.temperature ** 2
        sums = torch.stack([kd.detach().float(), out.loss.detach().float(), torch.ones_like(kd, dtype=torch.float32)])
        self.sums = sums if self.sums is None else self.sums + sums
        weight = batch.numel() if normalizer is None else 1
        return d.alpha * kd + (1 - d.alpha) * out.loss, weight

    def metrics(self) -> dict[str, float]:
        if self.sums is not None:
            kd, data, n = self.sums.tolist()
            self.logged = {"distill_loss": kd / n, "data_loss": data / n}
            self.sums = None
        return {**self.student_task.metrics(), **self.logged}

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """The student's validation figures, and the teacher's validation loss on the same batches (once)."""
        batches = list(batches)
        student = self.student_task.evaluate(engine, batches)
        if self.teacher_val is None:
            self.teacher_val = {"teacher_val_loss": self.student_task.evaluate(self.teacher, batches)["val_loss"]}
        return {**student, **self.teacher_val}

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        from orchestrator.models.teacher import parameter_bytes

        held, whole = parameter_bytes(self.teacher)
        return {"teacher_param_bytes_per_rank": held, "teacher_param_bytes": whole, **(self.teacher_val or {}),
                **self.student_task.final_report(engine, data, batch_size, rank, world)}

    def export(self, module, state: dict, folder: Path) -> None:
        self.student_task.export(module, state, folder)


def divergence(student_logits, teacher_logits, labels, beta: float, temperature: float, tokens):
    """The generalized Jensen-Shannon divergence of the GKD paper (Agarwal et al., eq. 1) summed over the
    positions whose label is not -100, over `tokens`. The formula of TRL's GKDTrainer.generalized_jsd_loss
    (tests/unit/test_distill.py checks the two agree); written here because TRL keeps it in trl.experimental,
    whose import pulls in its trainers and whose API may change without notice."""
    import torch
    import torch.nn.functional as F

    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0:
        per_token = F.kl_div(student, teacher, reduction="none", log_target=True)
    elif beta == 1:
        per_token = F.kl_div(teacher, student, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=student.dtype, device=student.device)
        mixture = torch.logsumexp(torch.stack([student + torch.log1p(-b), teacher + torch.log(b)]), dim=0)
        per_token = (b * F.kl_div(mixture, teacher, reduction="none", log_target=True)
                     + (1 - b) * F.kl_div(mixture, student, reduction="none", log_target=True))
    return per_token[labels != -100].sum() / tokens
