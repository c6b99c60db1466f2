"""The README is the user's manual: its commands must be the ones CI runs, and every key documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from orchestrator.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += _keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"```bash\n(bash tests/install-system-deps.sh && pip install torch==\S+ && "
                             r"pip install -e '\.\[dev\]' && .+)\n```", README)
    assert test_command, "README lost its test command"
    assert test_command.group(1) in (ROOT / ".ci" / "run").read_text()


def test_every_config_key_is_documented_in_the_readme():
    missing = [key for key in _keys(Config) if f"`{key}`" not in README and f"`{key}`," not in README]
    assert not missing, f"document these keys in README.md: {missing}"
