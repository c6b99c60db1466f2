"""Which searched keys mattered: Optuna's parameter importance on a sweep's completed trials.

Any sweep (grid, random or Optuna) is loaded into an in-memory Optuna study, one trial per
completed run with its searched values and its best metric, and judged by Optuna's default
evaluator, PED-ANOVA (how much each key decides whether a trial lands in the best 10%); it needs
no scikit-learn, unlike fANOVA. Early-stopped and failed trials are left out: their metric is
not comparable with runs that finished. With few trials the numbers say little, and
`Importance.caveat` says so in words rather than hiding the chart.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.compare.runs import Sweep

MEANINGFUL_TRIALS = 10
"""Below this many completed trials "the best 10%" is one trial, and the importance mostly measures noise."""


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
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    caveat = (f"only {len(done)} completed trials: the importance compares the best 10% of the trials with "
              f"the rest and needs about {MEANINGFUL_TRIALS} or more to mean much" if len(done) < MEANINGFUL_TRIALS
              else None)
    return Importance(dict(values), len(done), caveat)
