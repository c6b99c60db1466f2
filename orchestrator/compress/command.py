"""`orchestrator compress run_dir=<run> compress=<pipeline> [compress.key=value ...]`.

Loads the run's final model, applies the pipeline's passes in order, and measures quality,
sparsity, size and CPU latency before, after each pass and at the end; writes
<run_dir>/compressed/<pipeline>/ (the model and compress_report.json), adds the numbers to the
run's summary.json and a W&B run in the run's group, prints a before/after table, and exits 1
when a gate fails (the report is kept). Everything else comes from the run's config.yaml:
the data (its validation split), the sequence length, the logger.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from pathlib import Path

from orchestrator.compress.passes import Pipeline, build, pipeline_problems
from orchestrator.config.compress_checks import QUANTIZERS, ModelShape
from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError, GateFailed
from orchestrator.paths import unwritable
from orchestrator.rundir import COMPRESS_REPORT, RunDir

_OWN_KEYS = ("run_dir=", "compress=", "compress.")


def compose(overrides: list[str]) -> tuple[Config, Path]:
    """The run's own config with the chosen compress pipeline; ConfigError lists every problem."""
    import yaml
    from omegaconf import OmegaConf

    from orchestrator.config.compose import compose_dictconfig, load_job_file

    foreign = [o for o in overrides if not o.startswith(_OWN_KEYS)]
    if foreign:
        raise ConfigError([f"{o}: `orchestrator compress` takes run_dir=, compress= and compress.* keys; the rest "
                           "comes from the run's config.yaml" for o in foreign])
    given = [o.partition("=")[2] for o in overrides if o.startswith("run_dir=")]
    if not given or not given[-1]:
        raise ConfigError(["run_dir: required: the trained run to compress "
                           "(orchestrator compress run_dir=runs/<name> compress=prune50)"])
    run_dir = Path(given[-1]).expanduser().resolve()
    if not RunDir(run_dir).config.is_file():
        raise ConfigError([f"run_dir={given[-1]}: not a run directory (no config.yaml)"])
    overrides, named = _pass_names(overrides)
    per_pass = [o for o in overrides if named and o.startswith("compress.passes.")]  # applied to the named ones
    chosen = compose_dictconfig([o for o in overrides if not o.startswith("run_dir=") and o not in per_pass])
    base = load_job_file(str(RunDir(run_dir).config), [])
    base.compress = chosen.compress
    if named:
        base.compress.passes = [p for name in named for p in _passes_named(name)]
        if base.compress.name == "none":
            base.compress.name = "_".join(named)
        for override in per_pass:
            key, _, value = override.partition("=")
            try:
                OmegaConf.update(base, key, yaml.safe_load(value), merge=False)
            except Exception as error:  # omegaconf's ValidationError or ConfigKeyError: a wrong type or key
                raise ConfigError([f"{override}: {str(error).splitlines()[0]}"]) from None
    return OmegaConf.to_object(base), run_dir  # type: ignore[return-value]


_NAMES = re.compile(r"^compress\.passes=\[\s*(\w+(?:\s*,\s*\w+)*)\s*\]$")


def _pass_names(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`compress.passes=[wanda50, distill, int8_dynamic]`: a pipeline of presets' passes and passes by name, each
    with its defaults; the other overrides, and those names."""
    named: list[str] = []
    kept = []
    for override in overrides:
        found = _NAMES.match(override)
        if found:
            named = [name.strip() for name in found.group(1).split(",")]
        else:
            kept.append(override)
    return kept, named


def _passes_named(name: str) -> list:
    """A preset's passes (conf/compress/<name>.yaml), or one pass of that name with its defaults."""
    from omegaconf import OmegaConf

    from orchestrator.config.compose import config_dir
    from orchestrator.config.schema import PassConfig, PassName

    preset = config_dir() / "compress" / f"{name}.yaml"
    if preset.is_file():
        passes = list(OmegaConf.load(preset).get("passes") or [])
    elif name in PassName.__members__:
        passes = [{"name": name}]
    else:
        presets = sorted(path.stem for path in (config_dir() / "compress").glob("*.yaml"))
        raise ConfigError([f"compress.passes: {name} is neither a pass ({', '.join(PassName.__members__)}) nor a "
                           f"pipeline ({', '.join(presets)})"])
    return [OmegaConf.merge(OmegaConf.structured(PassConfig), p) for p in passes]


def run(overrides: list[str], config_file: str | None, print_config: bool) -> int:
    """The command: `--cfg job` prints the config the pipeline would run with; else compress."""
    if config_file:
        raise ConfigError([f"--config {config_file}: `orchestrator compress` reads the run's own config.yaml; "
                           "name the run with run_dir=..."])
    if print_config:
        from orchestrator.config.compose import to_yaml

        print(to_yaml(compose(overrides)[0]), end="")
        return 0
    compress(overrides)
    return 0


def compress(overrides: list[str]) -> Path:
    """Run the pipeline; returns the output folder. ConfigError before anything runs, GateFailed after."""
    cfg, run_dir = compose(overrides)
    c = cfg.compress
    model_dir = RunDir(run_dir).model
    problems = []
    if not (model_dir / "config.json").is_file():
        model_dir = _consolidate(cfg, run_dir, problems)
    if not c.passes:
        problems.append(f"compress={c.name}: no passes; pick a pipeline (compress=prune50, int8_dynamic, ... "
                        "see `orchestrator compress --help`)")
    if (model_dir / "compression.json").is_file():
        problems.append(f"run_dir={run_dir}: its model is already quantized (quantization-aware training); "
                        "compress a run with a floating-point model")
    problems += pipeline_problems(c, ModelShape.of_folder(model_dir), during_training=False)
    out = RunDir(run_dir).compressed(c.name)
    problems += [p for p in [unwritable("run_dir", str(out))] if p]
    if problems:
        raise ConfigError(problems)
    return _run(cfg, run_dir, model_dir, out)


def _run(cfg: Config, run_dir: Path, model_dir: Path, out: Path) -> Path:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestrator import tasks
    from orchestrator.compress import artifact, measure, surgery

    c, t = cfg.compress, cfg.train
    torch.manual_seed(t.seed)
    task = tasks.for_config(cfg)  # the run's own data and inputs: a fine-tuned run is scored on its replies
    data = task.prepare_data(cfg)
    val_blocks = data.blocks("val")
    train_batches = data.batches(t.micro_batch_size, 0, 1, t.seed)

    def forward_inputs(batch) -> dict:
        return {key: value for key, value in task.model_inputs(batch).items() if key != "labels"}

    def calibration(n: int) -> list[dict]:
        return [forward_inputs(train_batches.next()) for _ in range(n)]

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.loss_type = "ForCausalLM"  # name it, or transformers warns at every evaluation
    vocab = model.config.vocab_size
    swapped = surgery.conv1d_to_linear(model)
    if swapped:
        print(f"{swapped} Conv1D layers now nn.Linear (same outputs), so torchao can quantize them", flush=True)

    def snapshot(compiled: bool) -> dict:
        loss = measure.validation_loss(model, val_blocks, t.micro_batch_size, c.eval_batches, task.model_inputs)
        overall, per_layer = measure.sparsity(surgery.prunable(model))
        row = {"val_loss": loss, "ppl": measure.perplexity(loss), "sparsity": overall,
               "sparsity_per_layer": per_layer,
               "linear_weight_bytes": measure.weight_bytes(surgery.prunable(model)),
               "latency_eager": measure.latency_ms(model, t.seq_len, vocab, c.latency_runs, compiled=False)}
        if compiled:
            torch._dynamo.reset()
            row["latency_compiled"] = measure.latency_ms(model, t.seq_len, vocab, c.latency_runs, compiled=True)
        return row

    print(f"measuring the model before compression ({model_dir})", flush=True)
    before = snapshot(c.compile)
    rows = []
    pipeline = Pipeline(calibration, cfg, model_dir, RunDir(run_dir).compressed(f"{c.name}.distill"))
    for step in build(c):
        started = time.perf_counter()
        step.apply(model, pipeline)
        seconds = time.perf_counter() - started
        rows.append({"pass": step.name, "config": _plain(step.spec), "apply_s": seconds, **snapshot(False)})
        print(f"{step.key}={step.name}: ppl {rows[-1]['ppl']:.4f}, sparsity {rows[-1]['sparsity']:.4f}", flush=True)
    after = dict(rows[-1])
    if c.compile:
        torch._dynamo.reset()
        after["latency_compiled"] = measure.latency_ms(model, t.seq_len, vocab, c.latency_runs, compiled=True)

    probe = forward_inputs(val_blocks[:2])
    with torch.no_grad():
        logits = model(**probe).logits.float()
    shutil.rmtree(out, ignore_errors=True)
    quantizer = next((s for s in c.passes if s.name in QUANTIZERS), None)
    artifact.save(model, out, quantizer)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    with torch.no_grad():
        reloaded = artifact.load(out)(**probe).logits.float()
    report = _report(cfg, run_dir, model_dir, out, before, after, rows, swapped,
                     (reloaded - logits).abs().max().item())
    (out / COMPRESS_REPORT).write_text(json.dumps(report, indent=2))
    _add_to_summary(run_dir, report)
    from orchestrator.track.tracker import track_compression

    track_compression(run_dir, cfg.logger, report, out)
    print_table(report)
    print(f"compressed model: {out} (load it with orchestrator.compress.artifact.load('{out}'))", flush=True)
    gate = c.max_ppl_increase
    if gate is not None and not report["ppl_increase"] <= gate:
        raise GateFailed(f"compress.max_ppl_increase={gate}: perplexity rose {100 * report['ppl_increase']:.2f}% "
                         f"({report['ppl_before']:.4f} -> {report['ppl_after']:.4f}); "
                         f"report kept in {out / COMPRESS_REPORT}")
    return out


CONSOLIDATED = "consolidated"


def _consolidate(cfg: Config, run_dir: Path, problems: list[str]) -> Path:
    """A run without model/ (it stopped before the end): the newest complete checkpoint's ZeRO shards merged
    into one fp32 model, saved once in compressed/consolidated/ and used from there on."""
    from orchestrator.rundir import checkpoints as checkpoint

    folder = RunDir(run_dir).compressed(CONSOLIDATED)
    if (folder / "config.json").is_file():
        return folder
    found, _ = checkpoint.newest_usable(RunDir(run_dir).checkpoints)
    if found is None:
        problems.append(f"run_dir={run_dir}: holds neither a final model (model/) nor a complete checkpoint")
        return folder
    if any(spec.name.value == "qat" for spec in _training_passes(run_dir)):
        problems.append(f"run_dir={run_dir}: a quantization-aware run without model/; finish it first")
        return folder
    if problems:
        return folder
    import torch
    from transformers import AutoTokenizer

    from orchestrator import tasks
    from orchestrator.train.engine import consolidated_state_dict, use_cpu_accelerator_unless_cuda

    use_cpu_accelerator_unless_cuda()
    print(f"run_dir has no model/: merging the ZeRO shards of {found.path}", flush=True)
    task = tasks.for_config(cfg)
    data = task.prepare_data(cfg)
    model = task.build_model(cfg, data.meta)
    state = consolidated_state_dict(found.path, int(found.meta.get("zero_stage", cfg.zero.stage)))
    for key in [k for k in state if k.endswith(".weight_mask")]:  # gradual pruning: bake the masks in
        weight = key.removesuffix("_mask")
        state[weight] = state[weight] * state.pop(key)
    with torch.no_grad():
        model.load_state_dict(state)
    model.tie_weights()
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(data.tokenizer_dir)).save_pretrained(str(folder))
    return folder


def _training_passes(run_dir: Path) -> list:
    """The compress passes the run trained with (from its config.yaml)."""
    from omegaconf import OmegaConf

    from orchestrator.config.compose import load_job_file

    return OmegaConf.to_object(load_job_file(str(RunDir(run_dir).config), [])).compress.passes


def _plain(spec) -> dict:
    return {k: v.value if hasattr(v, "value") else v for k, v in dataclasses.asdict(spec).items()}


def _report(cfg: Config, run_dir: Path, model_dir: Path, out: Path, before: dict, after: dict, rows: list[dict],
            swapped: int, reload_diff: float) -> dict:
    from orchestrator.compress import measure

    c = cfg.compress
    ratio = after["linear_weight_bytes"] / before["linear_weight_bytes"]
    return {
        "pipeline": c.name,
        "run_dir": str(run_dir),
        "output": str(out),
        "config": {"passes": [_plain(s) for s in c.passes], "max_ppl_increase": c.max_ppl_increase,
                   "eval_batches": c.eval_batches, "latency_runs": c.latency_runs, "compile": c.compile},
        "sparsity": after["sparsity"],
        "sparsity_before": before["sparsity"],
        "sparsity_per_layer": after["sparsity_per_layer"],
        "val_loss_before": before["val_loss"],
        "val_loss_after": after["val_loss"],
        "ppl_before": before["ppl"],
        "ppl_after": after["ppl"],
        "ppl_increase": after["ppl"] / before["ppl"] - 1 if math.isfinite(after["ppl"]) else float("inf"),
        "linear_weight_bytes_before": before["linear_weight_bytes"],
        "linear_weight_bytes_after": after["linear_weight_bytes"],
        "linear_weight_ratio": ratio,
        "file_bytes_before": measure.folder_bytes(model_dir),
        "file_bytes_after": measure.folder_bytes(out),
        "latency": {"before": {k.removeprefix("latency_"): v for k, v in before.items() if k.startswith("latency")},
                    "after": {k.removeprefix("latency_"): v for k, v in after.items() if k.startswith("latency")},
                    "unit": "ms, median; prefill = one sequence of train.seq_len tokens, decode = one token after it"},
        "conv1d_swapped": swapped,
        "reload_max_abs_diff": reload_diff,
        "gate": {"max_ppl_increase": c.max_ppl_increase,
                 "passed": c.max_ppl_increase is None or after["ppl"] / before["ppl"] - 1 <= c.max_ppl_increase},
        "passes": rows,
    }


def _add_to_summary(run_dir: Path, report: dict) -> None:
    """The run's summary.json gains compress.<pipeline> with the report's top-level numbers."""
    run = RunDir(run_dir)
    summary = run.summary()
    summary.setdefault("compress", {})[report["pipeline"]] = {
        k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.write_summary(summary)


def print_table(report: dict) -> None:
    """Before, after each pass: quality, sparsity, size and eager latency; compiled latency before/after."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compress={report['pipeline']} (latency: median ms on CPU; c = torch.compile)")
    for column in ("stage", "val loss", "ppl", "sparsity", "linear MB", "prefill", "decode", "c prefill",
                   "c decode"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    lat = report["latency"]

    def row(stage: str, r: dict, latency: dict, compiled: dict | None) -> None:
        table.add_row(stage, f"{r['val_loss']:.4f}", f"{r['ppl']:.3f}", f"{r['sparsity']:.4f}",
                      f"{r['linear_weight_bytes'] / 1e6:.3f}", f"{latency['prefill_ms']:.2f}",
                      f"{latency['decode_ms']:.2f}",
                      f"{compiled['prefill_ms']:.2f}" if compiled else "",
                      f"{compiled['decode_ms']:.2f}" if compiled else "")

    before = {"val_loss": report["val_loss_before"], "ppl": report["ppl_before"],
              "sparsity": report["sparsity_before"], "linear_weight_bytes": report["linear_weight_bytes_before"]}
    row("before", before, lat["before"]["eager"], lat["before"].get("compiled"))
    for i, r in enumerate(report["passes"]):
        last = i == len(report["passes"]) - 1
        row(r["pass"], r, r["latency_eager"], lat["after"].get("compiled") if last else None)
    Console(width=max(Console().width, 110)).print(table)
    print(f"perplexity {report['ppl_before']:.4f} -> {report['ppl_after']:.4f} ({100 * report['ppl_increase']:+.2f}%), "
          f"linear weights x{report['linear_weight_ratio']:.3f}, files {report['file_bytes_before']:,} -> "
          f"{report['file_bytes_after']:,} bytes", flush=True)
