"""Range and cross-field checks on a typed Config.

Every check adds one problem in the form `key=value: what is allowed`, and all problems are
reported together, before Ray starts or anything is written. Types were already enforced by
the schema during composition; this module checks what types cannot express.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import glob
import math
import re
from pathlib import Path
from typing import Any

from orchestrator.config import adapter_checks, distill_checks, model_folder
from orchestrator.config.schema import (
    Arch,
    Backend,
    ClusterConfig,
    Config,
    DpoLoss,
    Offload,
    Precision,
    TaskName,
    TokenizeOn,
)
from orchestrator.machine import visible_gpus
from orchestrator.rundir import RunDir


class _Problems(list):
    def check(self, ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            self.append(f"{key}={_show(value)}: {allowed}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return getattr(value, "value", value) if not isinstance(value, bool) else str(value).lower()


def data_files(path: str) -> list[str]:
    """The files a data.path names: one file, every supported file under a folder, or a glob."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
    return sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())


DATA_SUFFIXES = {".txt", ".md", ".text", ".jsonl", ".json", ".parquet"}


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def slurm_time_s(value: str) -> int | None:
    """Seconds in a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); None if malformed."""
    match = _SLURM_TIME.match(value)
    if not match:
        return None
    days, first, second, third = match.groups()
    if days is not None:
        return int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    if third is not None:
        return int(first) * 3600 + int(second) * 60 + int(third)
    if second is not None:
        return int(first) * 60 + int(second)
    return int(first) * 60


def _check_backend(p: _Problems, c: ClusterConfig) -> None:
    """The keys of the chosen backend (cluster.name); the other backends' sections are ignored."""
    p.check(c.join_timeout_s >= 1, "cluster.join_timeout_s", c.join_timeout_s, "must be >= 1 second")
    p.check(c.workers_per_node is None or c.workers_per_node >= 1, "cluster.workers_per_node",
            c.workers_per_node, "must be >= 1, or null")
    if c.name is Backend.ray:
        p.check(c.gpus_per_worker is not None, "cluster.gpus_per_worker", c.gpus_per_worker,
                "cluster=ray needs a number (0 for CPU workers, 1 for one GPU each)")
        p.check(bool(c.address.strip()), "cluster.address", c.address, "must be host:port of the Ray head, or auto")
        p.check(c.dashboard_url is None or c.dashboard_url.startswith(("http://", "https://")),
                "cluster.dashboard_url", c.dashboard_url, "must be an http(s):// URL (Ray dashboard, port 8265)")
    if c.name in (Backend.slurm, Backend.k8s) and c.gpus_per_node and c.workers_per_node is not None:
        p.check(c.workers_per_node == c.gpus_per_node, "cluster.workers_per_node", c.workers_per_node,
                f"must equal cluster.gpus_per_node={c.gpus_per_node} (one worker per GPU), or null")
    if c.name is Backend.slurm:
        s = c.slurm
        limit = slurm_time_s(s.time)
        p.check(limit is not None and limit > 0, "cluster.slurm.time", s.time,
                "must be a Slurm time limit: minutes, HH:MM:SS or D-HH:MM:SS")
        p.check(s.preempt_signal_s >= 0 and (limit is None or s.preempt_signal_s < limit),
                "cluster.slurm.preempt_signal_s", s.preempt_signal_s,
                "must be >= 0 and shorter than cluster.slurm.time")
        p.check(s.cpus_per_task is None or s.cpus_per_task >= 1, "cluster.slurm.cpus_per_task", s.cpus_per_task,
                "must be >= 1, or null")
        p.check(0 < s.ray_port < 65536, "cluster.slurm.ray_port", s.ray_port, "must be a TCP port")
        for key in ("partition", "account", "qos", "mem", "constraint", "python"):
            value = getattr(s, key)
            p.check(value is None or re.fullmatch(r"[^\s'\"`$;&|<>\\]+", value) is not None, f"cluster.slurm.{key}",
                    value, "must be one word without quotes or shell characters")
        for line in s.extra_directives:
            p.check(line.startswith("-") and "\n" not in line, "cluster.slurm.extra_directives", line,
                    "each must be one sbatch option, e.g. --exclusive")
        for line in s.setup:
            p.check("\n" not in line, "cluster.slurm.setup", line, "each entry must be one shell line")
    if c.name is Backend.k8s:
        k = c.k8s
        p.check(_DNS_LABEL.match(k.namespace) is not None, "cluster.k8s.namespace", k.namespace,
                "must be a Kubernetes name (lower-case letters, digits, '-')")
        p.check(bool(k.image.strip()) and " " not in k.image, "cluster.k8s.image", k.image, "must name an image")
        p.check(k.mount_path.startswith("/"), "cluster.k8s.mount_path", k.mount_path, "must be an absolute path")
        for key in ("shared_volume_claim", "wandb_secret"):
            value = getattr(k, key)
            p.check(_DNS_LABEL.match(value) is not None, f"cluster.k8s.{key}", value, "must be a Kubernetes name")
        p.check(k.cpus_per_node is None or k.cpus_per_node >= 1, "cluster.k8s.cpus_per_node", k.cpus_per_node,
                "must be >= 1, or null")
        p.check(k.backoff_limit >= 0, "cluster.k8s.backoff_limit", k.backoff_limit, "must be >= 0")
        p.check(k.ttl_seconds_after_finished >= 0, "cluster.k8s.ttl_seconds_after_finished",
                k.ttl_seconds_after_finished, "must be >= 0")


def non_finite(node: Any, key: str = "") -> list[str]:
    """Every float key set to inf, -inf or nan, anywhere in the config (lists of sections included): one rule,
    so no key's own range check has to remember it (`nan > 0` is False, but `inf > 0` is True)."""
    if dataclasses.is_dataclass(node):
        return [line for f in dataclasses.fields(node)
                for line in non_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)]
    if isinstance(node, list):
        return [line for i, item in enumerate(node) for line in non_finite(item, f"{key}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key}={node}: must be a finite number"]
    return []


def validate(cfg: Config) -> list[str]:
    """Return every problem found in cfg (empty when it is valid)."""
    infinite = non_finite(cfg)
    if infinite:  # the other checks would compare with these values and say confusing things
        return infinite
    p = _Problems()
    c, m, d, o, z, t = cfg.cluster, cfg.model, cfg.data, cfg.optim, cfg.zero, cfg.train

    p.check(c.num_workers >= 1, "cluster.num_workers", c.num_workers, "must be >= 1")
    p.check(c.nodes >= 1, "cluster.nodes", c.nodes, "must be >= 1")
    p.check(c.gpus_per_node >= 0, "cluster.gpus_per_node", c.gpus_per_node, "must be >= 0")
    for key in ("gpu_memory_gb", "cpu_memory_gb"):
        value = getattr(c, key)
        p.check(value is None or value > 0, f"cluster.{key}", value, "must be > 0 GB, or null")
    for key in ("peak_tflops_bf16", "peak_tflops_fp16", "peak_tflops_fp32", "intra_node_gbps", "inter_node_gbps",
                "storage_write_gbps", "storage_read_gbps", "device_mtbf_hours"):
        value = getattr(c, key)
        p.check(value is None or value > 0, f"cluster.{key}", value, "must be > 0, or null for the preset's")
    for key in ("restart_s", "device_hour_cost"):
        value = getattr(c, key)
        p.check(value is None or value >= 0, f"cluster.{key}", value, "must be >= 0, or null")
    p.check(0 < cfg.plan.assumed_mfu <= 1, "plan.assumed_mfu", cfg.plan.assumed_mfu, "must be in (0, 1]")
    p.check(c.cpus_per_worker >= 1, "cluster.cpus_per_worker", c.cpus_per_worker, "must be >= 1")
    p.check(c.gpus_per_worker is None or c.gpus_per_worker >= 0, "cluster.gpus_per_worker", c.gpus_per_worker,
            "must be >= 0, or null to use GPUs when present")
    _check_backend(p, c)

    if m.pretrained_path is not None:
        folder = Path(m.pretrained_path).expanduser()
        if adapter_checks.adapter_folder_problem(folder):
            p.append(f"model.pretrained_path={m.pretrained_path}: {adapter_checks.adapter_folder_problem(folder)}")
        elif not (folder / "config.json").is_file():
            p.append(f"model.pretrained_path={m.pretrained_path}: must be a local Hugging Face model folder holding "
                     "config.json")
        else:
            classify = cfg.task.name is TaskName.classify
            problem = model_folder.classification_problem(folder) if classify else model_folder.causal_lm_problem(
                folder)
            p.check(problem is None, "model.pretrained_path", m.pretrained_path,
                    f"{problem}{'' if classify else ' (task=classify fine-tunes encoders)'}")
    else:
        for key in ("num_layers", "hidden_size", "num_heads"):
            value = getattr(m, key)
            p.check(value >= 1, f"model.{key}", value, "must be >= 1")
        if m.num_heads >= 1:
            p.check(m.hidden_size % m.num_heads == 0, "model.hidden_size", m.hidden_size,
                    f"must be divisible by model.num_heads={m.num_heads}")
        if m.num_kv_heads is not None:
            p.check(m.num_kv_heads >= 1 and m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
                    m.num_kv_heads, f"must divide model.num_heads={m.num_heads}")
        p.check(m.intermediate_size is None or m.intermediate_size >= 1, "model.intermediate_size",
                m.intermediate_size, "must be >= 1 or null")
        p.check(m.vocab_size is None or m.vocab_size >= 2, "model.vocab_size", m.vocab_size,
                "must be >= 2, or null for the tokenizer's size")
        p.check(m.max_position_embeddings is None or m.max_position_embeddings >= t.seq_len,
                "model.max_position_embeddings", m.max_position_embeddings,
                f"must be >= train.seq_len={t.seq_len} (or null)")
        p.check(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must be in [0, 1)")

    if d.sources:
        p.check(d.path is None, "data.path", d.path, "must be null with data.sources (the mixture names its paths)")
        p.check(not d.streaming, "data.streaming", d.streaming, "cannot stream a mixture (data.sources) yet")
        for i, source in enumerate(d.sources):
            p.check(bool(data_files(source.path)), f"data.sources[{i}].path", source.path,
                    f"no such file, or no {'/'.join(sorted(DATA_SUFFIXES))} files there")
            p.check(source.weight > 0, f"data.sources[{i}].weight", source.weight, "must be > 0")
            p.check(bool(source.text_field), f"data.sources[{i}].text_field", source.text_field, "must name a column")
    elif d.path is None and d.name != "stdlib":
        p.append(f"data.path: required with data={d.name} (a file, folder or glob of your text)")
    if d.path is not None:
        p.check(bool(data_files(d.path)), "data.path", d.path,
                f"no such file, or no {'/'.join(sorted(DATA_SUFFIXES))} files there")
    p.check(d.max_bytes is None or d.max_bytes >= 1, "data.max_bytes", d.max_bytes, "must be >= 1 or null")
    if d.tokenizer_path is not None:
        p.check(Path(d.tokenizer_path).expanduser().is_dir(), "data.tokenizer_path", d.tokenizer_path,
                "must be a local tokenizer folder (tokenizer.json or tokenizer_config.json)")
    else:
        p.check(d.vocab_size >= 300, "data.vocab_size", d.vocab_size, "must be >= 300 (256 bytes + merges)")
    p.check(0.0 < d.val_fraction <= 0.5, "data.val_fraction", d.val_fraction, "must be in (0, 0.5]")
    p.check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", d.num_proc, "must be >= 1 or null")
    p.check(d.tokenize_on is TokenizeOn.local or c.name is not Backend.local, "data.tokenize_on", d.tokenize_on.value,
            "needs a Ray cluster the driver joins (cluster=ray, slurm or k8s); on one machine data.num_proc "
            "uses its cores")
    p.check(bool(d.text_field), "data.text_field", d.text_field, "must name a column")
    if cfg.task.name is TaskName.classify:
        p.check(d.path is not None, "data.path", d.path,
                "task=classify needs a labelled file (data=local data.path=...)")
        p.check(not d.streaming and not d.sources, "data.streaming", d.streaming,
                "task=classify reads its labelled files whole (no streaming, no mixture)")
        p.check(bool(d.label_field), "data.label_field", d.label_field, "must name a column")
        for key in ("val_path", "test_path"):
            value = getattr(d, key)
            p.check(value is None or bool(data_files(value)), f"data.{key}", value, "no such file")
    else:
        p.check(m.arch is not Arch.bert or m.pretrained_path is not None, "model.arch", "bert",
                f"is an encoder: it classifies (task=classify), it cannot train as task={cfg.task.name.value}")

    p.check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    p.check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    p.check(0 <= o.beta1 < 1, "optim.beta1", o.beta1, "must be in [0, 1)")
    p.check(0 <= o.beta2 < 1, "optim.beta2", o.beta2, "must be in [0, 1)")
    p.check(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    p.check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    p.check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")

    p.check(z.stage in (0, 1, 2, 3), "zero.stage", z.stage, "must be 0, 1, 2 or 3")
    if Offload.nvme in (z.offload_optimizer, z.offload_param):
        p.check(z.nvme_path is not None and Path(z.nvme_path).expanduser().is_dir(), "zero.nvme_path", z.nvme_path,
                "must be an existing folder on an NVMe drive for nvme offload")
        nvme_key = "zero.offload_optimizer" if z.offload_optimizer is Offload.nvme else "zero.offload_param"
        p.check(ctypes.util.find_library("aio") is not None and visible_gpus() > 0, nvme_key, "nvme",
                "NVMe offload needs DeepSpeed's async_io op: libaio (apt install libaio-dev) and CUDA GPUs; "
                "use cpu offload here")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size",
                "param_persistence_threshold"):
        value = getattr(z, key)
        p.check(value is None or value >= 1, f"zero.{key}", value, "must be >= 1 element, or null")
    p.check(z.max_live_parameters >= 1, "zero.max_live_parameters", z.max_live_parameters, "must be >= 1")
    p.check(z.offload_optimizer is Offload.none or z.stage >= 1, "zero.offload_optimizer",
            z.offload_optimizer, "needs zero.stage >= 1")
    p.check(z.offload_param is Offload.none or z.stage == 3, "zero.offload_param", z.offload_param,
            "needs zero.stage=3")

    p.check(t.epochs is None or t.epochs > 0, "train.epochs", t.epochs, "must be > 0, or null for train.max_steps")
    p.check(t.epochs is None or not d.streaming, "train.epochs", t.epochs,
            "cannot count passes over a stream (data.streaming=true); set train.max_steps")
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every", "eval_batches",
                "activation_checkpointing_every"):
        value = getattr(t, key)
        p.check(value >= 1, f"train.{key}", value, "must be >= 1")
    for key in ("seed", "eval_every", "ckpt_every"):
        value = getattr(t, key)
        p.check(value >= 0, f"train.{key}", value, "must be >= 0")
    p.check(t.seq_len >= 8, "train.seq_len", t.seq_len, "must be >= 8")
    p.check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "must be >= 0 (0 disables clipping)")
    if t.precision is Precision.fp16:
        no_gpu = c.gpus_per_worker == 0 or (c.gpus_per_worker is None and visible_gpus() == 0)
        p.check(not no_gpu, "train.precision", t.precision,
                "fp16 with loss scaling needs CUDA GPUs; use train.precision=bf16 or fp32 on CPU")

    if cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir).expanduser()
        p.check(not run_dir.exists() or run_dir.is_dir(), "run_dir", cfg.run_dir, "exists and is not a folder")
        p.check(t.resume != "never" or not RunDir(run_dir).config.exists(), "run_dir", cfg.run_dir,
                "already holds a run and train.resume=never; pick a new run_dir (or train.resume=auto to continue)")
    p.check(t.resume in ("auto", "never") or Path(t.resume).expanduser().is_dir(), "train.resume", t.resume,
            "must be auto, never, or an existing checkpoint folder")
    p.check(t.max_failures >= 0, "train.max_failures", t.max_failures, "must be >= 0")
    p.check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "must be >= 1")
    p.check(t.collective_timeout_s >= 1, "train.collective_timeout_s", t.collective_timeout_s, "must be >= 1 second")
    p += adapter_checks.problems(cfg, visible_gpus() if c.gpus_per_worker is None else c.gpus_per_worker)
    p += distill_checks.problems(cfg)
    if cfg.task.name is TaskName.dpo:
        _check_dpo(p, cfg)
    if cfg.compress.passes:
        from orchestrator.config.compress_checks import ModelShape, pipeline_problems

        p += pipeline_problems(cfg.compress, ModelShape.of_config(m), during_training=True)
        for i, spec in enumerate(cfg.compress.passes):
            p.check(spec.end_step is None or spec.end_step <= t.max_steps, f"compress.passes[{i}].end_step",
                    spec.end_step, f"must be <= train.max_steps={t.max_steps} (or null: 5/6 of it)")
    return list(p)


def _check_dpo(p: _Problems, cfg: Config) -> None:
    dpo = cfg.dpo
    p.check(dpo.beta > 0, "dpo.beta", dpo.beta, "must be > 0 (how far the model may move from the reference)")
    p.check(0 <= dpo.label_smoothing < 0.5, "dpo.label_smoothing", dpo.label_smoothing, "must be in [0, 0.5)")
    p.check(dpo.label_smoothing == 0 or dpo.loss is DpoLoss.sigmoid, "dpo.label_smoothing", dpo.label_smoothing,
            f"applies to dpo.loss=sigmoid only, not {dpo.loss.value}")
    if cfg.model.pretrained_path is None:
        p.append("model.pretrained_path: required with task=dpo (the fine-tuned causal LM to align, e.g. a run's "
                 "model/ from task=sft); it is also the frozen reference")
    if cfg.data.path is None:
        p.append("data.path: required with task=dpo (JSONL, JSON or Parquet rows of prompt, chosen and rejected)")
