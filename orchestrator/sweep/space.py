"""The search space, written in Hydra's own sweep grammar and parsed by Hydra's override parser.

`choice(a,b)` and `a,b` (a choice), `range(start,stop[,step])`, `interval(lo,hi)` and
`tag(log,interval(lo,hi))` over any config key or config group. This module only parses and
checks (no Ray import): `orchestrator sweep` refuses a bad space before anything starts, and
`search_space` turns a checked one into Ray Tune domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config.overrides import parser
from orchestrator.config.schema import SearchAlgorithm


@dataclass(frozen=True)
class Param:
    key: str
    expression: str
    values: list[Any] | None  # choice / range: the values; interval: None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def first(self) -> Any:
        """A value the parameter can take (to check the key and its type before anything runs)."""
        return self.values[0] if self.values is not None else self.low


def parse(params: dict[str, str]) -> tuple[list[Param], list[str]]:
    """The parameters, and one problem line for each expression that is not a Hydra sweep."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parsed, problems = [], []
    for key, expression in params.items():
        try:
            value = parser().parse_override(f"{key}={expression}").value()
        except Exception:
            value = None
        if isinstance(value, ChoiceSweep):
            parsed.append(Param(key, expression, list(value.list)))
        elif isinstance(value, RangeSweep):
            parsed.append(Param(key, expression, list(_frange(value.start, value.stop, value.step or 1))))
        elif isinstance(value, IntervalSweep):
            parsed.append(Param(key, expression, None, float(value.start), float(value.end), "log" in value.tags))
        else:
            problems.append(f"sweep.params.{key}={expression}: not a sweep expression; use choice(a,b), a,b, "
                            "range(start,stop,step), interval(low,high) or tag(log,interval(low,high))")
    return parsed, problems


def _frange(start: float, stop: float, step: float):
    value = start
    while (step > 0 and value < stop) or (step < 0 and value > stop):
        yield value
        value += step


def check(params: list[Param], algorithm: SearchAlgorithm) -> list[str]:
    """What the algorithm cannot search: a grid needs finite values; intervals need a low < high."""
    problems = []
    for p in params:
        if p.values is not None and not p.values:
            problems.append(f"sweep.params.{p.key}={p.expression}: gives no values")
        if p.values is None and algorithm is SearchAlgorithm.grid:
            problems.append(f"sweep.params.{p.key}={p.expression}: a grid needs listed values (choice or range); "
                            "use sweep.algorithm=random or optuna for an interval")
        if p.values is None and not (p.low < p.high and (p.low > 0 or not p.log)):
            problems.append(f"sweep.params.{p.key}={p.expression}: needs low < high (and low > 0 on a log scale)")
    return problems


def grid_size(params: list[Param]) -> int:
    size = 1
    for p in params:
        size *= len(p.values or [])
    return size


def search_space(params: list[Param], algorithm: SearchAlgorithm) -> dict[str, Any]:
    """Ray Tune domains, keyed by config key: a grid of values, or distributions to sample."""
    from ray import tune

    space: dict[str, Any] = {}
    for p in params:
        if algorithm is SearchAlgorithm.grid:
            space[p.key] = tune.grid_search(p.values)
        elif p.values is not None:
            space[p.key] = tune.choice(p.values)
        else:
            space[p.key] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
    return space
