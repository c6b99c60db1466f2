"""`orchestrator compare` on run and sweep directories captured from real runs, without training anything.

tests/unit/data/compare holds their small files (no checkpoints, model or W&B folders): sweep/, a
4-trial grid over optim.lr with ASHA (one trial stopped at step 6), and runs/a, runs/b, two
`orchestrator train` runs that differ only in optim.lr (1e-3, 3e-3).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.compare.comparison import compare, differing_keys, retrain_command, to_csv, to_json
from orchestrator.compare.runs import Run, Sweep, load

DATA = Path(__file__).parent / "data" / "compare"
SWEEP = DATA / "sweep"
TRIALS = sorted((SWEEP / "trials").iterdir())


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A copy: tests that change a run's state change only theirs."""
    return Path(shutil.copytree(SWEEP, tmp_path / "sweep"))


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("trials/*/summary.json")}


def lay_out_wandb(sweep_dir: Path) -> None:
    """The fixture keeps no W&B files: lay out each trial's offline W&B folder as W&B names it."""
    for trial in sweep_dir.glob("trials/*"):
        run_id = json.loads((trial / "run.json").read_text())["run_id"]
        folder = trial / "wandb" / f"offline-run-20261203_071432-{run_id}"
        folder.mkdir(parents=True)
        (folder / f"run-{run_id}.wandb").touch()


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_sweep_is_one_row_per_trial_sorted_by_best_val_loss_with_only_the_searched_key(sweep_dir, capsys):
    code, out, _ = run_cli(capsys, str(sweep_dir))
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    names = [row.split("│")[1].strip() for row in rows]
    best = {name: min(json.loads(line)["val_loss"] for line in (sweep_dir / "trials" / name / "metrics.jsonl")
                      .read_text().splitlines() if "val_loss" in line) for name in names}
    assert len(rows) == 4 and names == sorted(names, key=best.get)
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert header.split("┃")[-2].strip() == "optim.lr"  # the one differing key, last column
    assert "early-stopped at 6" in out
    assert "ASHA stopped 8a831_00003 at step 6" in out
    command = next(line for line in out.splitlines() if "best trial" in line).split(": ", 1)[1]
    assert command.startswith("orchestrator train model=tiny ") and "optim.lr=0.003" in command
    assert "sweep." not in command and "1e-3,3e-3" not in command  # no sweep settings, no search expression


def test_two_runs_that_differ_only_in_the_learning_rate_list_only_that_key(capsys):
    code, out, _ = run_cli(capsys, str(DATA / "runs" / "a"), str(DATA / "runs" / "b"), "--format", "json")
    assert code == 0
    result = json.loads(out)
    assert result["differing_keys"] == ["optim.lr"]  # not run_dir, which differs too
    assert [(row["name"], row["config"]) for row in result["runs"]] == [("b", {"optim.lr": 0.003}),
                                                                        ("a", {"optim.lr": 0.001})]


def test_a_quoted_glob_is_expanded_and_an_online_run_is_named_by_its_url(tmp_path, capsys):
    runs_dir = Path(shutil.copytree(DATA / "runs", tmp_path / "runs"))
    config = yaml.safe_load((runs_dir / "a" / "config.yaml").read_text())
    config["logger"].update(mode="online", entity="team")
    (runs_dir / "a" / "config.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = run_cli(capsys, str(runs_dir / "*"), "--format", "json")
    assert code == 0
    pointers = {row["name"]: row["wandb"] for row in json.loads(out)["runs"]}
    run_id = json.loads((runs_dir / "a" / "run.json").read_text())["run_id"]
    assert pointers == {"a": f"https://wandb.ai/team/orchestrator/runs/{run_id}", "b": None}  # b: no W&B files kept


def test_trials_compared_as_runs_list_only_the_searched_key():
    # Trials are run directories too; their names (run_dir, W&B run id, trial id) must not count as differences.
    runs, sweeps = load([str(TRIALS[0]), str(TRIALS[1])])
    assert sweeps == []
    assert {run.config["run_dir"] for run in runs} != {runs[0].config["run_dir"]}
    assert compare(runs, sweeps, "val_loss", "min").differing_keys == ["optim.lr"]


def test_json_round_trips_every_number_exactly_as_summary_json(sweep_dir, capsys):
    code, out, _ = run_cli(capsys, str(sweep_dir), "--format", "json")
    assert code == 0 and {row["wandb"] for row in json.loads(out)["runs"]} == {None}  # no W&B run on disk
    lay_out_wandb(sweep_dir)
    code, out, _ = run_cli(capsys, str(sweep_dir), "--format", "json")
    assert code == 0
    result = json.loads(out)
    assert result["differing_keys"] == ["optim.lr"]
    recorded = summaries(sweep_dir)
    for row in result["runs"]:
        assert {"name", "run_dir", "status", "steps", "final_train_loss", "best_val_loss", "best_val_step",
                "tokens_per_s", "config"} <= set(row)
        summary = recorded[row["name"]]
        assert row["final_train_loss"] == summary["final_train_loss"]  # ==: exact, not approximately
        assert row["final_val_ppl"] == summary["final_val_ppl"]
        assert row["steps"] == summary["steps"] and row["status"] == summary["status"]
        assert row["peak_memory_bytes_per_rank"] == summary["peak_memory_bytes_per_rank"]
        evals = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                 if "val_loss" in line]
        best = min(evals, key=lambda r: r["val_loss"])
        assert (row["best_val_loss"], row["best_val_step"]) == (best["val_loss"], best["step"])
        assert set(row["config"]) == {"optim.lr"}
        assert row["wandb"].startswith("wandb sync ") and row["wandb"].endswith(f"offline-run-*-sweep-{row['name']}")
    [sweep] = result["sweeps"]
    assert sweep["asha_stops"] == [{"trial": "8a831_00003", "step": 6}] and sweep["best_trial"] == "8a831_00001"


def test_csv_has_one_line_per_run_with_the_exact_floats(sweep_dir):
    runs, sweeps = load([str(sweep_dir)])
    lines = to_csv(compare(runs, sweeps, "val_loss", "min")).splitlines()
    assert lines[0].split(",")[-1] == "optim.lr" and len(lines) == 5
    first = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert float(first["final_train_loss"]) == summaries(sweep_dir)[first["name"]]["final_train_loss"]


@pytest.mark.parametrize(("metric", "mode"), [("val_accuracy", "max"), ("val_macro_f1", "max"),
                                             ("val_reward_margin", "max"), ("val_preference_accuracy", "max"),
                                             ("val_loss", "min"), ("val_ppl", "min")])
def test_without_mode_an_accuracy_f1_or_margin_sorts_best_first(metric, mode):
    from orchestrator.compare.command import Request, _with_defaults

    assert _with_defaults(Request(paths=[], metric=metric), []).mode == mode


def test_sort_by_another_metric_and_mode(sweep_dir):
    runs, sweeps = load([str(sweep_dir)])
    by_loss = compare(runs, sweeps, "loss", "max").runs
    highest = [max(r["loss"] for r in run.history if "loss" in r) for run in by_loss]
    assert highest == sorted(highest, reverse=True)


def test_a_folder_that_is_not_a_run_is_refused_in_one_line_writing_nothing(sweep_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, str(sweep_dir), str(tmp_path / "empty"), "--png", str(tmp_path / "c.png"),
                             "--html", str(tmp_path / "r.html"))
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'empty'}: not a run directory")
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "r.html").exists()
    code, _, err = run_cli(capsys, str(tmp_path / "missing*"))
    assert code == 2 and "no such file or directory" in err


@pytest.mark.parametrize("flags, message", [
    (["--mode", "lowest"], "--mode lowest: must be one of min, max"),
    (["--format", "xml"], "--format xml: must be one of table, json, csv"),
    (["--png", "curves.jpg"], "--png curves.jpg: the file must end in .png"),
    (["--metric", "bleu"], "--metric bleu: no run logged it"),
])
def test_bad_options_are_refused_in_one_line(sweep_dir, capsys, flags, message):
    code, out, err = run_cli(capsys, str(sweep_dir), *flags)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1


def test_status_of_runs_that_have_not_ended(sweep_dir):
    running, preempted, failed = (sweep_dir / "trials" / name for name in ("8a831_00000", "8a831_00001", "8a831_00002"))
    for run_dir in (running, preempted, failed):
        (run_dir / "summary.json").unlink()
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
        (run_dir / "metrics.jsonl").write_text("\n".join(rows[:12]) + "\n")
        (run_dir / "events.jsonl").write_text(json.dumps({"event": "start", "step": 0, "time": 0}) + "\n")
    with open(preempted / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "preempted", "step": 12, "time": 1}) + "\n")
    with open(failed / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "failed", "step": 12, "time": 1, "error": "rank 1: RuntimeError: boom"}) + "\n")
    (sweep_dir / "sweep.json").unlink()  # a sweep still running has no record yet
    runs, sweeps = load([str(sweep_dir)])
    status = {run.name: (run.status, run.steps, run.error) for run in runs}
    assert status[running.name] == ("running", 12, None)
    assert status[preempted.name] == ("preempted", 12, None)
    assert status[failed.name] == ("failed", 12, "rank 1: RuntimeError: boom")
    assert not sweeps[0].ended and sweeps[0].searched == ["optim.lr"]


def test_a_trial_that_failed_before_its_run_directory_existed_is_a_row(sweep_dir):
    record = json.loads((sweep_dir / "sweep.json").read_text())
    record["trials"].append({"id": "8a831_00004", "overrides": {"optim.lr": "-1"}, "status": "failed",
                             "run_dir": str(sweep_dir / "trials" / "8a831_00004"), "steps": 0, "wall_s": 1.0,
                             "error": "optim.lr=-1: must be > 0"})
    (sweep_dir / "sweep.json").write_text(json.dumps(record))
    runs, sweeps = load([str(sweep_dir)])
    comparison = compare(runs, sweeps, "val_loss", "min")
    assert comparison.runs[-1].name == "8a831_00004" and comparison.runs[-1].status == "failed"
    assert comparison.differing_keys == ["optim.lr"]
    assert json.loads(to_json(comparison))["runs"][-1]["config"] == {"optim.lr": "-1"}


def test_only_keys_that_differ_are_listed_searched_first(tmp_path):
    runs = []
    for name, lr, stage in (("a", 1e-3, 2), ("b", 1e-3, 3), ("c", 3e-3, 2)):
        run_dir = Path(shutil.copytree(TRIALS[0], tmp_path / name))
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["optim"]["lr"], config["zero"]["stage"], config["run_dir"] = lr, stage, str(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        runs.append(str(run_dir))
    loaded, _ = load(runs)
    assert differing_keys(loaded, []) == ["optim.lr", "zero.stage"]  # config order
    assert differing_keys(loaded, ["zero.stage"]) == ["zero.stage", "optim.lr"]


def test_retrain_command_keeps_a_config_file_and_quotes_values(sweep_dir):
    _, [sweep] = load([str(sweep_dir)])
    sweep = Sweep(**{**sweep.__dict__, "config_file": "/a b/job.yaml",
                     "base_overrides": ["model=tiny", "train.max_steps=5", "sweep.name=x", "logger.tags=[a,b]",
                                        "train.max_steps=9"]})
    trial = sweep.trials[0]
    assert retrain_command(sweep, trial) == ("orchestrator train --config '/a b/job.yaml' model=tiny "
                                             "'logger.tags=[a,b]' train.max_steps=9 optim.lr=0.001 "
                                             f"run_dir={sweep_dir}/best-retrain")


def test_compression_reports_a_run_holds_are_shown(tmp_path, capsys):
    run_dir = Path(shutil.copytree(DATA / "runs" / "a", tmp_path / "a"))
    report = {"pipeline": "prune50", "sparsity": 0.5003, "ppl_before": 239.48, "ppl_after": 251.2,
              "file_bytes_before": 1_900_000, "file_bytes_after": 1_000_000}  # issue 11's report keys
    (run_dir / "compressed" / "prune50").mkdir(parents=True)
    (run_dir / "compressed" / "prune50" / "compress_report.json").write_text(json.dumps(report))
    code, out, _ = run_cli(capsys, str(run_dir))
    assert code == 0
    assert "compressed a (prune50): sparsity 0.500, ppl 239.48 -> 251.20, file 1.8 MiB -> 976.6 KiB" in out
    code, out, _ = run_cli(capsys, str(run_dir), "--format", "json")
    assert json.loads(out)["runs"][0]["compression"] == [report]


def test_png_has_one_labelled_curve_per_run_in_distinct_colours(sweep_dir, tmp_path, capsys):
    from orchestrator.compare.curves import figure

    runs, sweeps = load([str(sweep_dir)])
    comparison = compare(runs, sweeps, "val_loss", "min")
    train_ax, val_ax = figure(comparison).axes
    for ax, column in ((train_ax, "loss"), (val_ax, "val_loss")):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [f"{run.name} optim.lr={run.config['optim.lr']:g}"
                                                         for run in comparison.runs]
        assert len({line.get_color() for line in lines}) == 4
        for line, run in zip(lines, comparison.runs, strict=True):
            assert list(line.get_ydata()) == [row[column] for row in run.history if column in row]
    legend = [text.get_text() for text in figure(comparison).legends[0].get_texts()]
    assert legend == [line.get_label() for line in train_ax.get_lines()]
    assert [list(line.get_xdata()) for line in figure(comparison, "tokens").axes[0].get_lines()][0][:2] == [512, 1024]
    code, _, _ = run_cli(capsys, str(sweep_dir), "--png")
    assert code == 0 and (sweep_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_with_table_curves_and_sweep_plots(sweep_dir):
    from orchestrator.compare.html import render

    runs, sweeps = load([str(sweep_dir)])
    page = render(compare(runs, sweeps, "val_loss", "min"))
    scripts = Scripts()
    scripts.feed(page)
    assert scripts.sources == [] and scripts.inline >= 3  # plotly.js and every figure inline, nothing fetched
    assert page.count("<tr>") == 5 and 'id="curves"' in page and 'id="parcoords-0"' in page
    assert "one searched key (optim.lr)" in page  # importance of a single key is said to mean nothing


class Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.inline = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "img", "iframe"):
            source = dict(attrs).get("src") or dict(attrs).get("href")
            if source:
                self.sources.append(source)
            elif tag == "script":
                self.inline += 1


def synthetic_sweep(n: int) -> Sweep:
    """n trials whose val_loss depends on optim.lr only; optim.beta1 varies but does not matter."""
    trials = []
    for i in range(n):
        lr, beta1 = [1e-4, 1e-3, 1e-2][i % 3], [0.8, 0.9][(i // 3) % 2]
        val = 5.0 + 3 * abs(lr - 1e-3) * 100
        trials.append(Run(name=f"t{i}", run_dir=Path(f"t{i}"), status="completed", steps=10, final_train_loss=val,
                          final_val_loss=val, final_val_ppl=None, best_val_loss=val, best_val_step=10,
                          tokens_per_s=None, peak_memory_bytes_per_rank=None, wall_s=None,
                          config={"optim.lr": lr, "optim.beta1": beta1},
                          history=[{"step": 10, "loss": val, "val_loss": val}]))
    return Sweep(sweep_dir=Path("s"), name="s", metric="val_loss", mode="min", searched=["optim.lr", "optim.beta1"],
                 trials=trials, base_overrides=[], config_file=None, ended=True)


def test_parameter_importance_finds_the_key_that_matters():
    from orchestrator.compare.importance import importance

    result = importance(synthetic_sweep(12), "val_loss", maximize=False)
    assert list(result.values) == ["optim.lr", "optim.beta1"] and result.caveat is None
    assert result.values["optim.lr"] > 0.9
    few = importance(synthetic_sweep(4), "val_loss", maximize=False)
    assert few.values and "only 4 completed trials" in few.caveat


def test_wandb_report_structure():
    import wandb_workspaces.reports.v2 as wr

    from orchestrator.compare.wandb_report import build

    runs, sweeps = load([str(SWEEP)])
    report = build(compare(runs, sweeps, "val_loss", "min"), "team", "orchestrator")
    assert (report.entity, report.project, report.title) == ("team", "orchestrator", "compare: sweep sweep")
    [grid] = report.blocks
    assert isinstance(grid, wr.PanelGrid)
    [runset] = grid.runsets
    assert runset.filters == "Group == 'sweep'" and runset.project == "orchestrator"
    line_train, line_val, parallel, importance, comparer = grid.panels
    assert (line_train.x, line_train.y, line_val.y) == ("Step", ["loss"], ["val_loss"])
    assert [(c.metric, c.log) for c in parallel.columns] == [(wr.Config("optim.lr"), True),
                                                            (wr.SummaryMetric("val_loss"), None)]
    assert isinstance(importance, wr.ParameterImportancePlot) and importance.with_respect_to == "val_loss"
    assert isinstance(comparer, wr.RunComparer) and comparer.diff_only == "split"
    # Plain runs are picked by their W&B run ids.
    plain = build(compare(runs[:2], [], "val_loss", "min"), "team", "orchestrator")
    ids = ", ".join(f"'{run.wandb_run_id}'" for run in compare(runs[:2], [], "val_loss", "min").runs)
    assert plain.blocks[0].runsets[0].filters == f"ID in [{ids}]"


def test_wandb_report_is_refused_while_the_runs_are_offline(sweep_dir, capsys, monkeypatch):
    code, out, err = run_cli(capsys, str(sweep_dir), "--wandb-report")
    assert code == 2 and "kept no W&B run" in err
    lay_out_wandb(sweep_dir)
    code, out, err = run_cli(capsys, str(sweep_dir), "--wandb-report")
    assert code == 2 and out == ""
    assert "--wandb-report: 4 run(s) were tracked offline and are not on the W&B server yet; sync them first" in err
    for log in sweep_dir.glob("trials/*/wandb/offline-run-*/run-*.wandb"):
        log.with_suffix(".wandb.synced").touch()  # what `wandb sync` leaves next to what it uploaded
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, _, err = run_cli(capsys, str(sweep_dir), "--wandb-report")
    assert code == 2 and "WANDB_MODE=offline" in err



def test_compare_and_best_yaml_name_the_same_trial_when_best_seen_and_final_disagree(sweep_dir):
    """One rule for "the best trial": the best final metric among completed trials. A trial whose val_loss dipped
    lowest mid-run but ended worse is not the one a retrain reproduces."""
    from orchestrator.rundir import RunDir
    from orchestrator.sweep.record import best_completed, trial_record

    trials = sorted((sweep_dir / "trials").iterdir())
    completed = [t for t in trials if RunDir(t).summary().get("status") == "completed"]
    early_dip, steady = completed[:2]
    rows = RunDir(early_dip).rows()
    first_eval = next(row for row in rows if "val_loss" in row)
    first_eval["val_loss"] = 0.001  # lowest value seen by any trial, at its first evaluation
    RunDir(early_dip).metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for run_dir, final in ((early_dip, 9.0), (steady, 1.0)):
        rows = RunDir(run_dir).rows()
        last_eval = max(i for i, row in enumerate(rows) if "val_loss" in row)
        rows[last_eval]["val_loss"] = final
        RunDir(run_dir).metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = [trial_record(path, {}, "val_loss", maximize=False) for path in sorted((sweep_dir / "trials").iterdir())]
    assert best_completed(records, maximize=False)["id"] == steady.name
    runs, sweeps = load([str(sweep_dir)])
    assert json.loads(to_json(compare(runs, sweeps, "val_loss", "min")))["sweeps"][0]["best_trial"] == steady.name


CLASSIFIER_EVALUATIONS = {  # trial -> (val_loss, val_accuracy, val_macro_f1) at each evaluation
    "8a831_00000": [(0.9, 0.50, 0.45), (0.6, 0.70, 0.66)],
    "8a831_00001": [(0.8, 0.60, 0.58), (0.7, 0.90, 0.88)],  # the highest final accuracy, not the lowest loss
    "8a831_00002": [(1.0, 0.40, 0.30), (0.5, 0.55, 0.50)],  # the lowest final loss, the lowest accuracy
    "8a831_00003": [(0.7, 0.95, 0.94)],  # ASHA stopped it: the highest accuracy seen, but not a completed trial
}


@pytest.fixture
def classifier_sweep(sweep_dir) -> Path:
    """The captured sweep as a sequence-classification sweep leaves it: each evaluation logs val_loss,
    val_accuracy and val_macro_f1 (no perplexity), and summary.json has the last one's as final_<name>."""
    for trial, evaluations in CLASSIFIER_EVALUATIONS.items():
        run_dir = sweep_dir / "trials" / trial
        rows = []
        for i, (loss, accuracy, f1) in enumerate(evaluations):
            rows += [{"step": 2 * i + 1, "loss": 1.0 - i / 10, "tokens": 512 * (2 * i + 1)},
                     {"step": 2 * i + 2, "loss": 0.95 - i / 10, "tokens": 512 * (2 * i + 2), "val_loss": loss,
                      "val_accuracy": accuracy, "val_macro_f1": f1}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        summary = {key: value for key, value in json.loads((run_dir / "summary.json").read_text()).items()
                   if not key.startswith("final_val_")}
        last = rows[-1]
        summary.update(steps=last["step"], final_val_loss=last["val_loss"], final_val_accuracy=last["val_accuracy"],
                       final_val_macro_f1=last["val_macro_f1"])
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return sweep_dir


def test_a_classifier_sweep_sorted_by_accuracy_lists_the_most_accurate_first_with_its_columns(classifier_sweep, capsys):
    code, out, _ = run_cli(capsys, str(classifier_sweep), "--metric", "val_accuracy", "--mode", "max")
    assert code == 0
    header = [cell.strip() for cell in next(line for line in out.splitlines() if line.startswith("┃")).split("┃")]
    assert {"final val_accuracy", "final val_macro_f1", "best val_accuracy (step)"} <= set(header)
    rows = {row[1].strip(): dict(zip(header, (cell.strip() for cell in row), strict=True))
            for row in (line.split("│") for line in out.splitlines() if line.startswith("│"))}
    assert list(rows) == ["8a831_00003", "8a831_00001", "8a831_00000", "8a831_00002"]  # best accuracy seen first
    assert (rows["8a831_00001"]["final val_accuracy"], rows["8a831_00001"]["final val_macro_f1"],
            rows["8a831_00001"]["best val_accuracy (step)"]) == ("0.9000", "0.8800", "0.9000 (4)")
    assert "best trial 8a831_00001 (final val_accuracy 0.9000 at step 4)" in out  # completed, highest final
    code, out, _ = run_cli(capsys, str(classifier_sweep), "--metric", "val_accuracy", "--format", "json")
    assert code == 0
    result = json.loads(out)  # no --mode: an accuracy is best at its highest
    assert [row["name"] for row in result["runs"]][0] == "8a831_00003"
    assert result["sweeps"][0]["best_trial"] == "8a831_00001"
    code, out, _ = run_cli(capsys, str(classifier_sweep), "--metric", "val_accuracy", "--mode", "min", "--format",
                           "json")
    assert code == 0 and json.loads(out)["sweeps"][0]["best_trial"] == "8a831_00002"  # --mode min: the least accurate


def test_accuracy_and_f1_columns_appear_only_where_a_run_reports_them(classifier_sweep, capsys):
    language_model = str(DATA / "runs" / "a")
    _, out, _ = run_cli(capsys, language_model)
    assert "val_accuracy" not in out and "macro_f1" not in out
    _, out, _ = run_cli(capsys, language_model, "--format", "csv")
    assert out.splitlines()[0] == ("name,run_dir,status,steps,final_train_loss,best_val_loss,best_val_step,"
                                   "final_val_ppl,tokens_per_s,wall_s,wandb,peak_memory_bytes_per_rank")
    _, out, _ = run_cli(capsys, language_model, "--format", "json")
    assert not any(key.startswith(("final_val_acc", "final_val_macro")) for key in json.loads(out)["runs"][0])

    code, out, _ = run_cli(capsys, language_model, str(classifier_sweep / "trials" / "8a831_00001"), "--format", "csv")
    assert code == 0
    lines = list(csv.DictReader(io.StringIO(out)))
    values = {line["name"]: (line["final_val_accuracy"], line["final_val_macro_f1"]) for line in lines}
    assert values == {"a": ("", ""), "8a831_00001": ("0.9", "0.88")}
    code, out, _ = run_cli(capsys, language_model, str(classifier_sweep / "trials" / "8a831_00001"), "--format", "json")
    assert {row["name"]: row.get("final_val_accuracy") for row in json.loads(out)["runs"]} == {
        "a": None, "8a831_00001": 0.9}


def test_the_curves_beside_the_train_loss_are_the_metric_the_runs_are_sorted_by(classifier_sweep):
    from orchestrator.compare.curves import figure

    runs, sweeps = load([str(classifier_sweep)])
    for metric, column in (("val_accuracy", "val_accuracy"), ("loss", "val_loss")):  # train loss is already left
        comparison = compare(runs, sweeps, metric, "max")
        _, metric_ax = figure(comparison).axes
        assert metric_ax.get_title() == column.replace("_", " ")
        assert [list(line.get_ydata()) for line in metric_ax.get_lines()] == [
            [row[column] for row in run.history if column in row] for run in comparison.runs]


def test_best_yaml_and_compare_name_the_most_accurate_completed_trial_with_mode_max(classifier_sweep):
    from orchestrator.config.schema import MetricMode, SweepConfig
    from orchestrator.sweep.record import trial_record, write

    records = [trial_record(path, {}, "val_accuracy", maximize=True)
               for path in sorted((classifier_sweep / "trials").iterdir())]
    assert {r["id"]: r["best_metric"] for r in records}["8a831_00003"] == 0.95
    written = write(classifier_sweep, SweepConfig(metric="val_accuracy", mode=MetricMode.max), records, 1.0, 1)
    assert written["mode"] == "max"
    best_yaml = (classifier_sweep / "best.yaml").read_text()
    assert best_yaml.startswith("# best completed trial 8a831_00001: val_accuracy=0.9\n")
    assert yaml.safe_load(best_yaml)["optim"]["lr"] == yaml.safe_load(
        (classifier_sweep / "trials" / "8a831_00001" / "config.yaml").read_text())["optim"]["lr"]
    runs, sweeps = load([str(classifier_sweep)])
    assert json.loads(to_json(compare(runs, sweeps, "val_accuracy", "max")))["sweeps"][0]["best_trial"] == "8a831_00001"


def test_runs_that_trained_adapters_show_how_many_parameters_trained(tmp_path, capsys):
    """A `trainable` column (and CSV field) once any run trained adapters; `all` for the one that did not."""
    import shutil

    runs = []
    for name, trainable in (("full", None), ("lora", 16_640)):
        run = shutil.copytree(DATA / "runs" / "a", tmp_path / name)
        done = json.loads((run / "summary.json").read_text())
        if trainable is not None:
            done["trainable_params"] = trainable
        (run / "summary.json").write_text(json.dumps(done))
        runs.append(str(run))
    code, out, _ = run_cli(capsys, *runs, "--format", "csv")
    header, *rows = out.splitlines()
    column = header.split(",").index("trainable_params")
    assert code == 0 and sorted(row.split(",")[column] for row in rows) == ["", "16640"]
    code, out, _ = run_cli(capsys, *runs)
    assert code == 0 and "trainable" in out and "16,640 │" in out and " all │" in out


def test_a_distilled_run_shows_its_distillation_teacher_and_data_losses(tmp_path, capsys):
    import shutil

    runs = []
    for name, figures in (("plain", {}), ("student", {"distill_loss": 0.032, "data_loss": 4.51,
                                                      "teacher_val_loss": 4.7555})):
        run = shutil.copytree(DATA / "runs" / "a", tmp_path / name)
        done = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**done, **figures}))
        runs.append(str(run))
    code, out, _ = run_cli(capsys, *runs, "--format", "json")
    rows = {row["name"]: row for row in json.loads(out)["runs"]}
    assert code == 0 and rows["student"]["teacher_val_loss"] == 4.7555 and rows["plain"]["distill_loss"] is None
    code, out, _ = run_cli(capsys, *runs)
    assert code == 0 and "teacher val loss" in out and "4.7555" in out
