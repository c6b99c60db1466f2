"""Which searched keys mattered: Optuna's fANOVA importance evaluator on a sweep's completed trials.

Any sweep (grid, random or Optuna) is loaded into an in-memory Optuna study, one trial per
completed run with its searched values and its best metric, so the same evaluator W&B-style
parameter importance relies on runs here offline. Early-stopped and failed trials are left
out: their metric is not comparable with runs that finished. With few trials the forest fANOVA
fits says little; `Importance.caveat` says so in words rather than hiding the chart.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.compare.runs import Sweep

MEANINGFUL_TRIALS = 10
"""Below this many completed trials fANOVA's random forest mostly fits noise."""


@dataclass(frozen=True)
class Importance:
    values: dict[str, float]  # searched key -> importance (sums to 1), most important first; {} when none
    trials: int  # completed trials it was computed from
    caveat: str | None  # why the numbers mean little or nothing, in a sentence


def importance(sweep: Sweep, metric: str, maximize: bool) -> Importance:
    import optuna

    done = [t for t in sweep.trials if t.status == "completed" and t.best(metric, maximize)[0] is not None]
    keys = sweep.searched
    if len(keys) < 2:
        return Importance({}, len(done), f"one searched key ({', '.join(keys) or 'none'}): its importance is 1 "
                                         "by construction; importance ranks two or more keys")
    if len(done) < 2:
        return Importance({}, len(done), f"{len(done)} completed trial(s): importance needs at least 2")
    distributions = {}
    for key in keys:
        values = [t.value(key) for t in done]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            distributions[key] = optuna.distributions.FloatDistribution(float(min(values)), float(max(values)))
        else:
            distributions[key] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    for trial in done:
        params = {key: trial.value(key) if isinstance(dist, optuna.distributions.FloatDistribution)
                  else str(trial.value(key)) for key, dist in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=trial.best(metric, maximize)[0]))
    values = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    caveat = (f"only {len(done)} completed trials: fANOVA needs about {MEANINGFUL_TRIALS} or more before these "
              "numbers mean much" if len(done) < MEANINGFUL_TRIALS else None)
    return Importance(dict(values), len(done), caveat)
