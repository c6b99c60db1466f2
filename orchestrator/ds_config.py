"""Config + Plan -> the DeepSpeed config dict. Pure; never a checked-in JSON file.

The optimizer is declared here (not built by us) so DeepSpeed picks the right implementation:
torch's AdamW when states live with the parameters, its C++ CPU Adam when they are offloaded.
The LR schedule is ours (train/schedule.py) because DeepSpeed's has no warmup+cosine to a floor.
"""

from __future__ import annotations

from orchestrator.config.schema import Config, Offload, Precision
from orchestrator.plan import Plan


def deepspeed_config(cfg: Config, plan: Plan) -> dict:
    z, t, o = cfg.zero, cfg.train, cfg.optim
    offloaded = z.offload_optimizer is not Offload.none
    zero: dict = {"stage": z.stage}
    if offloaded:
        zero["offload_optimizer"] = {"device": z.offload_optimizer.value, "pin_memory": False}
    if z.offload_param is not Offload.none:
        zero["offload_param"] = {"device": z.offload_param.value, "pin_memory": False}
    if z.stage == 3:
        # Lets rank 0 write a whole Hugging Face model at the end without a conversion step.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision is Precision.bf16},
        "fp16": {"enabled": t.precision is Precision.fp16, "loss_scale": 0, "initial_scale_power": 16},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": [o.beta1, o.beta2],
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                "torch_adam": not offloaded,
            },
        },
        "steps_per_print": 2**31 - 1,  # our tracker reports; keep DeepSpeed's own log quiet
        "wall_clock_breakdown": False,
    }
