"""Config + Plan -> the DeepSpeed config dict. Pure; never a checked-in JSON file.

The optimizer is declared here (not built by us) so DeepSpeed picks the right implementation:
torch's AdamW when states live with the parameters, its C++ CPU Adam when they are offloaded.
The LR schedule is ours (train/schedule.py) because DeepSpeed's has no warmup+cosine to a floor.
"""

from __future__ import annotations

from orchestrator.config.schema import Config, Offload, Precision
from orchestrator.plan.plan import Plan, with_model_shapes


def _offload(device: Offload, nvme_path: str | None) -> dict:
    if device is Offload.nvme:
        return {"device": "nvme", "nvme_path": nvme_path, "pin_memory": True}
    return {"device": device.value, "pin_memory": False}


def zero_section(cfg: Config) -> dict:
    """The zero_optimization block, with bucket sizes scaled to the model (see ZeroConfig)."""
    z, h = cfg.zero, with_model_shapes(cfg).model.hidden_size
    zero: dict = {"stage": z.stage}
    if z.stage >= 1:
        zero["reduce_bucket_size"] = z.reduce_bucket_size or h * h
        zero["overlap_comm"] = z.overlap_comm
        zero["contiguous_gradients"] = True
    if z.stage in (1, 2):
        zero["allgather_bucket_size"] = z.allgather_bucket_size or h * h
    if z.stage == 3:
        zero["stage3_prefetch_bucket_size"] = z.prefetch_bucket_size or int(0.9 * h * h)
        zero["stage3_param_persistence_threshold"] = z.param_persistence_threshold or 10 * h
        zero["stage3_max_live_parameters"] = z.max_live_parameters
        # Lets rank 0 write a whole Hugging Face model at the end without a conversion step.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if z.offload_optimizer is not Offload.none:
        zero["offload_optimizer"] = _offload(z.offload_optimizer, z.nvme_path)
    if z.offload_param is not Offload.none:
        zero["offload_param"] = _offload(z.offload_param, z.nvme_path)
    return zero


def deepspeed_config(cfg: Config, plan: Plan) -> dict:
    """cfg must be resolved (plan.resolved_config): no `auto` precision or stage left."""
    t, o = cfg.train, cfg.optim
    offloaded = cfg.zero.offload_optimizer is not Offload.none
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero_section(cfg),
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
                # torch's fused AdamW: one kernel for all parameters instead of several per tensor (CUDA only)
                **({"fused": True} if plan.uses_gpus and not offloaded else {}),
            },
        },
        "steps_per_print": 2**31 - 1,  # our tracker reports; keep DeepSpeed's own log quiet
        "wall_clock_breakdown": False,
    }
