"""The machine the plan assumes at scale: peak FLOP/s, link and storage bandwidth, failure rate. Pure.

A preset per common machine (`cluster.hardware`), each figure overridable by its own key
(`cluster.inter_node_gbps=25`, ...). Peak FLOP/s are the dense datasheet figures mfu.py uses for
a run's MFU, so a plan and the run it predicts divide by the same peak. Bandwidths are per device
and per direction, as ring collectives use them: NVLink 4 moves 900 GB/s both ways (450 each way)
on H100/H200, NVLink 3 600 (300) on A100; across machines each GPU has its own 400 Gb/s NDR
(50 GB/s) or 200 Gb/s HDR (25 GB/s) InfiniBand port on DGX-class nodes. Storage bandwidth is per
machine: Llama 3's checkpoint store sustained 2-7 TB/s for 2,048 machines, 1-3.5 GB/s each.

The failure rate: Llama 3 (Dubey et al. 2024, section 3.3.4) counted 419 unexpected interruptions
in 54 days on 16,384 H100s, every cause counted (GPUs, memory, network, host, software): one per
3.09 h for the job, so one per 50,677 h per device. Failures of independent devices add up, so a
job on D devices fails every device_mtbf_hours / D hours.

The `cpu` preset describes one CPU worker per device (cluster.cpus_per_worker cores); its figures
vary by machine far more than a GPU's, so calibrate them with `orchestrator plan --calibrate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from orchestrator.config.schema import ClusterConfig, HardwarePreset
from orchestrator.plan.mfu import table_peak_flops

LLAMA3_DEVICE_MTBF_HOURS = 16_384 * 54 * 24 / 419
"""Per-device mean time between interruptions implied by Llama 3's 419 in 54 days on 16,384 GPUs."""


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_tflops_bf16: float
    peak_tflops_fp16: float
    peak_tflops_fp32: float
    intra_node_gbps: float
    inter_node_gbps: float
    storage_write_gbps: float
    storage_read_gbps: float
    restart_s: float
    device_mtbf_hours: float
    device_hour_cost: float | None = None
    note: str = ""
    """Why this preset was taken, when the config did not name one."""

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s of one device at `precision` (bf16, fp16, fp32)."""
        return getattr(self, f"peak_tflops_{precision}") * 1e12

    def to_dict(self) -> dict:
        return asdict(self)


def _gpu(name: str, device: str, nvlink_gbps: float, network_gbps: float) -> Hardware:
    half, single = table_peak_flops(device, "bf16") / 1e12, table_peak_flops(device, "fp32") / 1e12
    return Hardware(name=name, peak_tflops_bf16=half, peak_tflops_fp16=half, peak_tflops_fp32=single,
                    intra_node_gbps=nvlink_gbps, inter_node_gbps=network_gbps, storage_write_gbps=2.0,
                    storage_read_gbps=4.0, restart_s=600.0, device_mtbf_hours=LLAMA3_DEVICE_MTBF_HOURS)


_CPU_CORE_TFLOPS = 0.05
"""One core's matmul rate (about what mfu.py's probe measures on a server core in fp32)."""

PRESETS = {
    HardwarePreset.h100_sxm: _gpu("h100_sxm", "H100", nvlink_gbps=450.0, network_gbps=50.0),
    HardwarePreset.h200: _gpu("h200", "H200", nvlink_gbps=450.0, network_gbps=50.0),
    HardwarePreset.a100_80g: _gpu("a100_80g", "A100", nvlink_gbps=300.0, network_gbps=25.0),
    HardwarePreset.a100_40g: _gpu("a100_40g", "A100", nvlink_gbps=300.0, network_gbps=25.0),
    HardwarePreset.cpu: Hardware(name="cpu", peak_tflops_bf16=_CPU_CORE_TFLOPS, peak_tflops_fp16=_CPU_CORE_TFLOPS,
                                 peak_tflops_fp32=_CPU_CORE_TFLOPS, intra_node_gbps=2.0, inter_node_gbps=1.25,
                                 storage_write_gbps=0.5, storage_read_gbps=1.0, restart_s=60.0,
                                 device_mtbf_hours=LLAMA3_DEVICE_MTBF_HOURS),
}

_OVERRIDABLE = ("peak_tflops_bf16", "peak_tflops_fp16", "peak_tflops_fp32", "intra_node_gbps", "inter_node_gbps",
                "storage_write_gbps", "storage_read_gbps", "restart_s", "device_mtbf_hours", "device_hour_cost")


def hardware_for(cluster: ClusterConfig, uses_gpus: bool) -> Hardware:
    """The preset `cluster.hardware` names (auto: cpu or h100_sxm), with the cluster's own figures over it."""
    preset, note = cluster.hardware, ""
    if preset is HardwarePreset.auto:
        preset = HardwarePreset.h100_sxm if uses_gpus else HardwarePreset.cpu
        note = "assumed: set cluster.hardware" if uses_gpus else ""
    hardware = PRESETS[preset]
    if preset is HardwarePreset.cpu:
        cores = cluster.cpus_per_worker
        hardware = replace(hardware, **{f"peak_tflops_{p}": getattr(hardware, f"peak_tflops_{p}") * cores
                                        for p in ("bf16", "fp16", "fp32")})
    overrides = {key: getattr(cluster, key) for key in _OVERRIDABLE if getattr(cluster, key) is not None}
    return replace(hardware, note=note, **overrides)
