"""What a sweep trial reports to Ray Tune when its run has ended: every validation metric its task logs, so
sweep.metric can be any of them (a classifier's val_accuracy as much as a language model's val_loss)."""

import json

import pytest

from orchestrator.sweep.trial import last_result


@pytest.mark.parametrize(("final", "reported"), [
    ({"final_val_loss": 0.41, "final_val_accuracy": 0.875, "final_val_macro_f1": 0.8},  # task=classify
     {"val_loss": 0.41, "val_accuracy": 0.875, "val_macro_f1": 0.8}),
    ({"final_val_loss": 5.47, "final_val_ppl": 239.4}, {"val_loss": 5.47, "val_ppl": 239.4}),  # task=clm, sft
])
def test_a_trial_reports_every_validation_metric_of_its_last_evaluation(tmp_path, final, reported):
    summary = {"final_train_loss": 0.3, **final, "status": "completed", "steps": 20, "tokens": 10240}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert last_result(tmp_path) == {"status": "completed", "step": 20, "loss": 0.3, **reported}
