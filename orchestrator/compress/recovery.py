"""The `distill` compression pass: quality lost to pruning won back by distillation from the model before it.

The pruned model is saved as a model folder and trained by an ordinary `task=distill` job (the same driver,
Ray Train workers and DeepSpeed ZeRO settings as the run it came from, on the run's own data), its teacher the
run's dense model, its zeros kept by `keep_sparsity` masks so the sparsity does not change. The job's run
directory is <run_dir>/compressed/<pipeline>.distill/run (metrics, W&B, checkpoints like any run); its trained
model then replaces the pruned one in the pipeline, which goes on (to quantization, say) and is measured after
this pass like after any other.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil

from orchestrator.config.schema import (
    CompressConfig,
    Config,
    DistillConfig,
    DistillData,
    PassConfig,
    PassName,
    PeftConfig,
    TaskConfig,
    TaskName,
)


def distill(model, spec: PassConfig, pipeline) -> None:
    """Train `model` (pruned, in place) as the student of pipeline.dense_model for spec.steps steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.pytorch_utils import Conv1D

    from orchestrator.compress import artifact, surgery
    from orchestrator.config.compose import validated
    from orchestrator.rundir import RunDir
    from orchestrator.train_command import run

    student = pipeline.workdir / "student"
    shutil.rmtree(pipeline.workdir, ignore_errors=True)
    artifact.save(copy.deepcopy(model), student, None)  # GPT-2's layers back to Conv1D, as from_pretrained wants
    AutoTokenizer.from_pretrained(str(pipeline.dense_model)).save_pretrained(str(student))
    job = validated(job_config(pipeline.run_config, spec, pipeline.dense_model, student, pipeline.workdir / "run"))
    print(f"distill: training the pruned model for {spec.steps} steps as the student of {pipeline.dense_model} "
          f"(run directory {job.run_dir})", flush=True)
    run_dir = run(job)
    trained = AutoModelForCausalLM.from_pretrained(str(RunDir(run_dir).model))
    if not any(isinstance(m, Conv1D) for m in model.modules()):
        surgery.conv1d_to_linear(trained)  # the pipeline's GPT-2 runs on nn.Linear copies (surgery.py)
    with torch.no_grad():
        model.load_state_dict(trained.state_dict())


def job_config(run: Config, spec: PassConfig, teacher, student, run_dir) -> Config:
    """The run's config turned into the recovery's: task=distill on the run's data (its replies, for a fine-tuned
    run), the pruned model as a pretrained student, the zeros kept, a fresh run directory, no adapters."""
    t = run.train
    return dataclasses.replace(
        run,
        task=TaskConfig(name=TaskName.distill),
        distill=DistillConfig(teacher_path=str(teacher),
                              data=DistillData.sft if run.task.name is TaskName.sft else DistillData.clm),
        model=dataclasses.replace(run.model, pretrained_path=str(student)),
        data=dataclasses.replace(run.data, tokenizer_path=None),
        optim=dataclasses.replace(run.optim, lr=spec.lr if spec.lr is not None else run.optim.lr / 10,
                                  warmup_steps=min(run.optim.warmup_steps, spec.steps // 10)),
        train=dataclasses.replace(t, max_steps=spec.steps, resume="never", eval_every=spec.steps,
                                  ckpt_every=spec.steps),
        compress=CompressConfig(name="keep_sparsity", passes=[PassConfig(name=PassName.keep_sparsity)]),
        peft=PeftConfig(),
        run_dir=str(run_dir),
    )
