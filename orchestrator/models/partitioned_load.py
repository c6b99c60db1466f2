"""Load a pretrained checkpoint at ZeRO-3 with every rank reading only its own partition of each weight.

transformers' ZeRO-3 path (`from_pretrained` while an HfDeepSpeedConfig lives) reads the whole state dict into
rank 0's memory and gathers every parameter whole on every rank to copy it in, and DeepSpeed's `zero.Init`
broadcasts rank 0's initial values of each parameter as the model is built, so a rank briefly holds far more
than its share. Here the model is built under `zero.Init` with no weight initialisation and no broadcast, then
each rank reads, with plain file reads, the byte range of every tensor that is its partition from the
safetensors files straight into the partition: no rank holds more than its partitions and one read chunk, and
no collective runs.

Safetensors stores each tensor contiguous and row-major, and ZeRO-3 partitions the flattened parameter into
equal ranges (rank r holds elements [r * size, (r + 1) * size), the last one padded), so a partition is one
byte range of the file. A checkpoint whose tensors do not match the model's parameters one for one by name
and shape (keys transformers renames or fuses as it loads, or weights only in pytorch_model.bin) is not
loaded here: `load` returns None and the caller falls back to transformers' own path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.model_folder import safetensors_files, tensor_header

_CHUNK_BYTES = 64 << 20
"""The most one read stages at a time when the checkpoint's dtype or device differs from the partition's."""

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class _Stored:
    path: Path
    offset: int  # of the tensor's first byte in the file
    shape: tuple[int, ...]
    dtype: str  # torch's name


def load(folder: str, attention: str, role: str = "model"):
    """The causal LM in `folder`, built partitioned under the live HfDeepSpeedConfig's ZeRO-3 settings and
    filled from its safetensors files rank by rank; None when the files do not map onto the model. `role` names
    it in the output (a distillation's teacher loads this way too)."""
    import torch
    from transformers import AutoConfig, GenerationConfig
    from transformers.integrations import deepspeed_config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    stored = _stored_tensors(Path(folder))
    config = AutoConfig.from_pretrained(folder, attn_implementation=attention)
    config.dtype = torch.get_default_dtype()  # what from_pretrained records when given no dtype
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if stored is None or not _matches(_skeleton(model_class, config), stored):
        if _rank() == 0:
            print(f"{role}: {folder}'s tensors are not {model_class.__name__}'s parameters one for one: loading "
                  "it through transformers, which reads the whole checkpoint on rank 0", flush=True)
        return None
    model = _build_partitioned(model_class, config, deepspeed_config())
    read = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            read += _read_partition(stored[name], param)
        for name, buffer in model.named_buffers():
            if name in stored:  # a persistent buffer the checkpoint saved: small, read whole
                read += _read_range(stored[name], buffer.view(-1), 0, buffer.numel())
    if (Path(folder) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    if _rank() == 0:
        total = sum(path.stat().st_size for path in {entry.path for entry in stored.values()})
        print(f"{role}: loaded partitioned at ZeRO-3, rank 0 read {read / 1e6:,.0f} MB of the checkpoint's "
              f"{total / 1e6:,.0f} MB", flush=True)
    return model


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _stored_tensors(folder: Path) -> dict[str, _Stored] | None:
    """Every tensor of the folder's safetensors files; None without them or with a dtype read here cannot cast."""
    stored = {}
    for path in safetensors_files(folder):
        header, data_start = tensor_header(path)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in _DTYPES:
                return None
            stored[name] = _Stored(path, data_start + entry["data_offsets"][0], tuple(entry["shape"]),
                                   _DTYPES[entry["dtype"]])
    return stored or None


def _skeleton(model_class, config):
    """The model on the meta device: its parameter and buffer names and shapes, for no memory."""
    import torch
    from transformers import initialization

    with torch.device("meta"), initialization.no_init_weights():
        skeleton = model_class(config)
    skeleton.tie_weights()
    return skeleton


def _matches(skeleton, stored: dict[str, _Stored]) -> bool:
    """Every parameter stored under its own name and shape, and nothing stored that is not a parameter, a tied
    parameter's other name, or a buffer."""
    params = dict(skeleton.named_parameters())  # a tied weight once, under its first name
    known = set(dict(skeleton.named_parameters(remove_duplicate=False))) | set(dict(skeleton.named_buffers()))
    return (all(name in stored and stored[name].shape == tuple(p.shape) for name, p in params.items())
            and set(stored) <= known)


def _build_partitioned(model_class, config, ds_config: dict):
    """The model built under zero.Init as transformers builds it (no weight initialisation, RoPE buffers kept in
    their dtype), without the broadcast of rank 0's initial values: every partition is read from the checkpoint
    next, so sending uninitialised memory would only cost time and, on the other ranks, a whole parameter."""
    import deepspeed
    from transformers import initialization
    from transformers.integrations.deepspeed import prevent_arange_dtype_change
    from transformers.modeling_utils import set_zero3_state

    class PartitionWithoutBroadcast(deepspeed.zero.Init):
        def _zero_init_param(self, param):  # DeepSpeed 0.19's per-parameter step, less its dist.broadcast
            self._convert_to_deepspeed_param(param)
            param.partition()

    with (initialization.no_init_weights(), prevent_arange_dtype_change(),
          PartitionWithoutBroadcast(config_dict_or_path=ds_config), set_zero3_state()):
        model = model_class(config)
    model.tie_weights()
    return model


def _read_partition(stored: _Stored, param) -> int:
    """This rank's range of the flattened parameter into its ZeRO-3 partition, the padding past the end zeroed;
    the bytes read."""
    import deepspeed.comm as dist

    partition = param.ds_tensor
    size = partition.ds_numel
    start = size * dist.get_rank(group=param.ds_process_group)
    count = max(0, min(size, param.ds_numel - start))
    partition[count:].zero_()
    return _read_range(stored, partition, start, count)


def _read_range(stored: _Stored, target, start: int, count: int) -> int:
    """Elements [start, start + count) of the stored tensor into target[:count]: straight into the target's
    memory when it is on the CPU in the stored dtype, else through chunks cast and copied. The bytes read."""
    import torch

    dtype = getattr(torch, stored.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    direct = target.device.type == "cpu" and target.dtype == dtype and target.is_contiguous()
    per_chunk = count if direct else max(1, _CHUNK_BYTES // itemsize)
    with open(stored.path, "rb", buffering=0) as f:
        done = 0
        while done < count:
            n = min(per_chunk, count - done)
            chunk = target[done:done + n] if direct else torch.empty(n, dtype=dtype)
            _read_exactly(f, stored.offset + (start + done) * itemsize, chunk.view(torch.uint8).numpy())
            if not direct:
                target[done:done + n].copy_(chunk)
            done += n
    return count * itemsize


def _read_exactly(f, offset: int, into) -> None:
    """Fill `into` from the file at `offset` (a read may return less than asked, e.g. above 2 GiB on Linux)."""
    view = memoryview(into).cast("B")
    f.seek(offset)
    while len(view):
        got = f.readinto(view)
        if not got:
            raise EOFError(f"{f.name} ends before the tensor does")
        view = view[got:]
