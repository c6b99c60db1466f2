"""The package's layering, read from the source with `ast` so it stays true: which package may import
which, where the run directory's file names are spelled, and how long a module may grow.

Every import counts: at module level and inside functions, `import x` and `from x import y`, relative
imports resolved against the importing module. `from orchestrator import sweep` counts as importing
`orchestrator.sweep`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "orchestrator"


@dataclass(frozen=True)
class Rule:
    where: str
    """The folder the rule covers, relative to the repository root (every .py file under it)."""
    forbidden: tuple[str, ...] = ()
    """Modules it must not import (each with any submodule)."""
    only: tuple[str, ...] | None = None
    """If set: the only orchestrator modules it may import (each with any submodule)."""


# The import rules (issue 24): a package never imports the layers above it.
ABOVE_CONFIG = ("orchestrator.plan", "orchestrator.train", "orchestrator.launch", "orchestrator.sweep",
                "orchestrator.compare", "orchestrator.compress", "orchestrator.data", "orchestrator.models",
                "orchestrator.track", "orchestrator.tasks")
RULES = [
    # package                  must not import (any submodule included)
    Rule("orchestrator/train", forbidden=("orchestrator.compress", "orchestrator.sweep", "orchestrator.compare")),
    Rule("orchestrator/launch", forbidden=("orchestrator.train", "orchestrator.sweep", "orchestrator.compress",
                                           "orchestrator.compare")),
    Rule("orchestrator/plan", forbidden=("torch", "ray", "deepspeed", "transformers")),
    Rule("orchestrator/compare", forbidden=("orchestrator.sweep", "orchestrator.train")),
    # package                  and, from orchestrator, imports only these
    Rule("orchestrator/config", forbidden=ABOVE_CONFIG,
         only=("orchestrator.config", "orchestrator.errors", "orchestrator.machine", "orchestrator.rundir",
               "orchestrator.paths", "orchestrator.redact")),
]

RUN_DIR_MODULE = "orchestrator/rundir/__init__.py"
RUN_DIR_NAMES = ("metrics.jsonl", "summary.json", "events.jsonl")
"""Spelled only in RUN_DIR_MODULE: everyone else asks RunDir for the path."""

MAX_MODULE_LINES = 400
LONGER_MODULES_ALLOWED = {"orchestrator/config/schema.py"}  # the schema: one documented dataclass per group
TRAINING_LOOP = "orchestrator/train/loop.py"
TRAINING_FUNCTION = "train_loop"
MAX_TRAINING_FUNCTION_LINES = 150


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _dotted(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, str]]:
    """(line, module, statement) for every import in the file: `from a import b` as module a.b, relative
    imports made absolute; the statement as written (for the failure message)."""
    module = _dotted(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ast.unparse(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base, ast.unparse(node))
                      for alias in node.names]
    return sorted(found)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(rule: Rule) -> list[str]:
    lines = []
    for path in sorted((ROOT / rule.where).rglob("*.py")):
        for line, module, statement in imports(path):
            banned = next((banned for banned in rule.forbidden if _within(module, banned)), None)
            if banned:
                lines.append(f"{_name(path)}:{line}: `{statement}`: {rule.where}/ must not import {banned}")
            elif rule.only is not None and _within(module, "orchestrator") and not any(
                    _within(module, allowed) for allowed in rule.only):
                lines.append(f"{_name(path)}:{line}: `{statement}`: {rule.where}/ may import only "
                             f"{', '.join(rule.only)} from orchestrator")
    return list(dict.fromkeys(lines))  # one line per statement, however many names it imports


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.where)
def test_import_rules(rule: Rule):
    assert (ROOT / rule.where).is_dir(), f"{rule.where}: no such package"
    problems = _violations(rule)
    assert not problems, "\n".join(problems)


def test_the_import_reader_sees_every_form(tmp_path):
    source = tmp_path / "orchestrator" / "config" / "sample.py"
    source.parent.mkdir(parents=True)
    source.write_text("import torch.nn as nn, os\n"
                      "from orchestrator import sweep\n"
                      "def f():\n"
                      "    from ..compress.passes import build\n"
                      "    from . import schema\n")
    assert [found[:2] for found in imports(source, tmp_path)] == [
        (1, "os"), (1, "torch.nn"), (2, "orchestrator.sweep"), (4, "orchestrator.compress.passes.build"),
        (5, "orchestrator.config.schema")]


def _strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants, f-string pieces included; docstrings left out (they describe, they do not spell paths)."""
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    return sorted((node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and id(node) not in docstrings), key=lambda node: (node.lineno, node.col_offset))


def test_only_the_run_directory_module_spells_its_file_names():
    assert (ROOT / RUN_DIR_MODULE).is_file(), f"{RUN_DIR_MODULE}: missing"
    problems = []
    for path in _modules():
        if _name(path) == RUN_DIR_MODULE:
            continue
        for node in _strings(_tree(path)):
            spelled = [name for name in RUN_DIR_NAMES if node.value.endswith(name)]
            if spelled:
                problems.append(f"{_name(path)}:{node.lineno}: {node.value!r} spells {spelled[0]}; "
                                f"use RunDir ({RUN_DIR_MODULE})")
    assert not problems, "\n".join(problems)


def test_no_module_is_over_400_lines():
    problems = []
    for path in _modules():
        count = len(path.read_text().splitlines())
        if count > MAX_MODULE_LINES and _name(path) not in LONGER_MODULES_ALLOWED:
            problems.append(f"{_name(path)}:{count}: {count} lines, over {MAX_MODULE_LINES}; split it")
    assert not problems, "\n".join(problems)


def test_the_training_function_is_under_150_lines():
    path = ROOT / TRAINING_LOOP
    functions = {node.name: node for node in ast.walk(_tree(path))
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    name = TRAINING_FUNCTION
    assert name in functions, f"{TRAINING_LOOP}: no function named {name}"
    node = functions[name]
    length = node.end_lineno - node.lineno + 1
    assert length < MAX_TRAINING_FUNCTION_LINES, (
        f"{TRAINING_LOOP}:{node.lineno}: {name} is {length} lines, not under {MAX_TRAINING_FUNCTION_LINES}; "
        "move what is not the loop itself (summary, throughput, hooks) out of it")


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py files), never in a test module."""
    problems = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for line, module, statement in imports(path):
            leaf = module.split(".")
            if leaf[0] == "tests" and any(part.startswith("test_") or part == "conftest" for part in leaf[1:]):
                problems.append(f"{_name(path)}:{line}: `{statement}`: move what it needs into tests/helpers.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("argv", [["--help"], ["plan", "zero=3"], ["train", "zero=7"], ["plan", "model=llama-8b",
                                                                                          "plan.format=json"]],
                         ids=" ".join)
def test_help_plan_and_config_errors_import_no_torch_ray_or_deepspeed(argv):
    """The fast paths: the CLI as a user runs it, its imports listed by Python itself (-X importtime)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode in (0, 2), result.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"torch", "ray", "deepspeed", "transformers"}, sorted(imported & {"torch", "ray"})
