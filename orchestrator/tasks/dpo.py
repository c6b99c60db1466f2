"""Preference tuning by direct preference optimisation (`task=dpo`): the model learns to prefer each pair's chosen
response to its rejected one, relative to a frozen reference, the model it started from (Rafailov et al., 2023).

With r = log π(response) - log π_ref(response) summed over the response's tokens, and h = r_chosen - r_rejected:
sigmoid (the paper's) loss = -(1 - ε) log σ(β h) - ε log σ(-β h), ε = dpo.label_smoothing (conservative DPO);
ipo loss = (h - 1 / (2β))², with per-token mean log-probabilities (Azar et al.; as TRL computes both).

The reference: with adapters (peft=lora, dora, qlora) the same model with its adapters switched off, so no second
copy is held; otherwise a frozen copy of model.pretrained_path (models/teacher.py: partitioned at ZeRO-3, whole
below). Dropout is switched off in the model, as TRL does by default: the reference's and the policy's
log-probabilities then differ only by what training changed.

Reported on every logging step (rank 0's micro-batches since the last log) and evaluation (every rank's validation
pairs): the reward margin β h averaged over pairs, the preference accuracy (share of pairs with a positive
margin), and the chosen and rejected responses' mean summed log-probabilities under the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator.config.schema import Config, DpoLoss, PeftMethod
from orchestrator.data.sft import IGNORE, INPUT_IDS, LABELS, POSITIONS
from orchestrator.tasks.sft import longest

FIGURES = ("reward_margin", "preference_accuracy", "logp_chosen", "logp_rejected")
"""The figures logged beside the loss (and, prefixed val_, at each evaluation)."""


class DirectPreference:
    name = "dpo"

    def __init__(self, cfg: Config) -> None:
        self.dpo = cfg.dpo
        self.adapters = cfg.peft.method is not PeftMethod.none
        self.reference = None  # a frozen copy; None with adapters (the policy with them off)
        self.sums = None  # on the device: FIGURES summed over the pairs since the last log, and the pairs
        self.logged: dict[str, float] = {}

    def prepare_data(self, cfg: Config):
        from orchestrator.data.dpo import prepare

        return prepare(cfg)

    def build_model(self, cfg: Config, meta: dict):
        import torch

        from orchestrator.models import quantized_base, teacher
        from orchestrator.models.registry import build_model

        model = build_model(cfg.model, meta["vocab_size"], cfg.train.seq_len, meta["eos_token_id"],
                            quantized_base.load_options(cfg))
        model.generation_config.eos_token_id = meta["eos_token_id"]
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if not self.adapters:
            self.reference = teacher.load(Path(cfg.model.pretrained_path).expanduser(), cfg.train.precision,
                                          cfg.model.attn_implementation.value)
        return model

    def model_inputs(self, batch) -> dict:
        """Both rows of every pair (chosen, rejected, chosen, ...), cut after the batch's last real token."""
        rows = batch.flatten(0, 1)
        rows = rows[..., :longest(rows)]
        return {"input_ids": rows[:, INPUT_IDS], "labels": rows[:, LABELS], "position_ids": rows[:, POSITIONS],
                "use_cache": False}

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int):
        from orchestrator.data.loader import eval_batches

        return eval_batches(blocks, batch_size, rank, world, limit)

    def loss_normalizer(self, batches: list, grad_accum: int, world: int):
        return None  # every micro-batch holds as many pairs: the mean of their means is the batch's mean

    def loss(self, engine, batch, normalizer):
        losses, figures = self._pairs(engine, batch)
        sums = _summed(figures)
        self.sums = sums if self.sums is None else self.sums + sums
        return losses.mean(), 1

    def metrics(self) -> dict[str, float]:
        if self.sums is not None:
            *totals, pairs = self.sums.tolist()
            self.logged = {name: total / pairs for name, total in zip(FIGURES, totals, strict=True)}
            self.sums = None
        return dict(self.logged)

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """The loss and FIGURES over every rank's validation pairs."""
        import torch
        import torch.distributed as dist

        total = torch.zeros(len(FIGURES) + 2, dtype=torch.float64, device=engine.device)
        with torch.no_grad():
            for batch in batches:
                losses, figures = self._pairs(engine, batch.to(engine.device))
                total += torch.cat([losses.sum().reshape(1), _summed(figures)]).to(torch.float64)
        dist.all_reduce(total)
        loss, *sums, pairs = total.tolist()
        return {"val_loss": loss / pairs, **{f"val_{name}": value / pairs for name, value in zip(FIGURES, sums,
                                                                                               strict=True)}}

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        from orchestrator.models.teacher import parameter_bytes

        held, whole = parameter_bytes(self.reference) if self.reference is not None else (0, 0)
        return {"reference": "frozen copy" if self.reference is not None else "the model with its adapters off",
                "reference_param_bytes_per_rank": held, "reference_param_bytes": whole}

    def export(self, module, state: dict, folder: Path) -> None:
        module.save_pretrained(str(folder), state_dict=state)

    def _pairs(self, engine, batch):
        """(each pair's loss, FIGURES of each pair stacked [4, pairs]) for a batch of pairs."""
        import torch

        from orchestrator.models import adapters

        inputs = self.model_inputs(batch)
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        mean = self.dpo.loss is DpoLoss.ipo
        policy = response_logps(engine(**forward).logits, labels, mean)
        with torch.no_grad():
            if self.reference is not None:
                reference_logits = self.reference(**forward).logits
            else:
                with adapters.switched_off(engine.module):
                    reference_logits = engine(**forward).logits
            reference = response_logps(reference_logits, labels, mean)
        return preference_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2], self.dpo.beta,
                               self.dpo.loss, self.dpo.label_smoothing)


def _summed(figures):
    """FIGURES summed over the pairs, and the count of pairs: a [5] float32 tensor on their device."""
    import torch

    return torch.cat([figures.float().sum(dim=1), torch.tensor([figures.shape[1]], dtype=torch.float32,
                                                               device=figures.device)])


def response_logps(logits, labels, mean: bool):
    """Each row's log-probability of its response tokens (labels not -100), summed or (mean) averaged. Row by
    row: without gradients (the reference) only one row's float32 logits exist at a time."""
    import torch

    targets = labels[:, 1:]  # the logits at position t predict token t + 1
    scored = targets != IGNORE
    picked = targets.clamp(min=0)
    rows = []
    for row_logits, row_targets in zip(logits[:, :-1], picked, strict=True):
        row_logits = row_logits.float()
        rows.append(row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1) - row_logits.logsumexp(dim=-1))
    per_token = torch.stack(rows) * scored
    total = per_token.sum(dim=1)
    return total / scored.sum(dim=1).clamp(min=1) if mean else total


def preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float,
                    loss: DpoLoss, label_smoothing: float):
    """(each pair's loss, [reward margin, preference accuracy, log π(chosen), log π(rejected)] of each pair)."""
    import torch
    import torch.nn.functional as F

    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss is DpoLoss.ipo:
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    margin = (chosen_reward - rejected_reward).detach()
    figures = torch.stack([margin, (margin > 0).to(margin.dtype), policy_chosen.detach(), policy_rejected.detach()])
    return losses, figures
