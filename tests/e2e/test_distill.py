"""`task=distill` on a teacher the tool trained (the session's reference run): a student of half its layers,
initialised from them, trained at ZeRO-3 on 2 workers with the teacher partitioned like the student."""

from __future__ import annotations

import os

from tests.helpers import REFERENCE_JOB, metrics, orchestrator, summary


def test_at_zero3_each_rank_holds_half_the_teacher_and_the_student_learns_from_it(reference, data_cache, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "student"
    result = orchestrator("train", *REFERENCE_JOB, "task=distill", f"distill.teacher_path={reference.run_dir}",
                          "distill.init=teacher_layers", "zero=3", "train.max_steps=6", "train.eval_every=6",
                          "train.ckpt_every=6", "logger.mode=disabled", f"run_dir={run_dir}",
                          env={**os.environ, "ORCHESTRATOR_CACHE": data_cache}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "teacher: loaded partitioned at ZeRO-3" in result.stdout + result.stderr
    s = summary(run_dir)
    assert s["teacher_param_bytes_per_rank"] <= 0.55 * s["teacher_param_bytes"]
    assert s["teacher_val_loss"] > 0 and s["final_val_loss"] > 0
    logged = metrics(run_dir)
    assert all(row["distill_loss"] >= 0 and row["data_loss"] > 0 for row in logged)
    assert logged[-1]["distill_loss"] < logged[0]["distill_loss"]  # it learns the teacher
    student = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    assert student.config.n_layer == 1  # every second of the teacher's two
