"""Command-line overrides in Hydra's grammar: telling sweep expressions from plain `key=value`, and
writing a value back as an override that round-trips exactly. Shared by the sweep, submit and
compare commands, which all read a sweep's command line.
"""

from __future__ import annotations

from typing import Any


def parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(plain overrides shared by every trial, sweep expressions by key) from the command line."""
    plain, swept = [], {}
    for item in overrides:
        key, _, expression = item.partition("=")
        try:
            sweeps = parser().parse_override(item).is_sweep_override()
        except Exception:
            sweeps = False  # not ours to judge: composing the config reports it in one line
        if sweeps:
            swept[key] = expression
        else:
            plain.append(item)
    return plain, swept


def as_override(key: str, value: Any) -> str:
    """`key=value` for Hydra; floats keep every digit (repr round-trips), so a trial's value is exact."""
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def as_overrides(values: dict[str, Any]) -> dict[str, str]:
    """A trial's values as recorded (sweep.trial_overrides, sweep.json): key -> the text after `=`."""
    return {key: as_override(key, value).partition("=")[2] for key, value in values.items()}
