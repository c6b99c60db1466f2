"""The worker image and the shell entry points: linted here, since no Docker engine runs on CI."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", "--config", str(ROOT / "docker" / "hadolint.yaml"),
                             str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_prebuilds_deepspeed_ops_and_runs_as_non_root():
    stages = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert len(stages) == 2  # build stage with the CUDA toolchain, then the runtime image
    for flag in ("DS_BUILD_CPU_ADAM=1", "DS_BUILD_FUSED_ADAM=1", "TORCH_CUDA_ARCH_LIST"):
        assert flag in DOCKERFILE
    user = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["orchestrator"]' in DOCKERFILE
    assert not re.search(r"(API_KEY|TOKEN|PASSWORD)\s*=", DOCKERFILE)  # secrets come at run time


def test_image_pins_satisfy_the_project_requirements():
    declared = {Requirement(r).name: Requirement(r) for r in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = [Requirement(line) for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert {p.name for p in pins} == set(declared)
    for pin in pins:
        (version,) = [s.version for s in pin.specifier]
        assert declared[pin.name].specifier.contains(version), f"{pin} is outside {declared[pin.name]}"


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "runs/", "tests/", "wandb/"):
        assert entry in ignored


def test_every_shell_script_passes_shellcheck():
    scripts = [*ROOT.glob("launch/**/*.sh"), *ROOT.glob("docker/*.sh"), *ROOT.glob("tests/*.sh"), ROOT / ".ci" / "run"]
    assert len(scripts) >= 7
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
