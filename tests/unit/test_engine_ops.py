"""DeepSpeed's C++ ops are built once per Python environment, by the driver, never inside a worker's start-up."""

from __future__ import annotations

import sys

from orchestrator.train import engine


def test_each_python_environment_builds_its_ops_in_a_folder_of_its_own(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = engine.extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/opt/another-venv")
    assert engine.extensions_dir() != here  # torch's default folder is shared: two venvs rebuilt each other's op
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/scratch/ops")
    assert str(engine.extensions_dir()) == "/scratch/ops"  # the user's choice wins


def test_the_driver_builds_only_the_ops_this_environment_lacks(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(engine, "build_ops", built.append)
    offload = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    engine.build_missing_ops(engine.ops_for(offload))
    assert built == [["ShareMemCommBuilder", "CPUAdamBuilder"]] and "once" in capsys.readouterr().out
    for op in ("deepspeed_shm_comm", "cpu_adam"):
        (tmp_path / op).mkdir()
        (tmp_path / op / f"{op}.so").write_bytes(b"")
    engine.build_missing_ops(engine.ops_for(offload))
    assert len(built) == 1 and capsys.readouterr().out == ""  # a later start only loads them
    assert engine.ops_for({"zero_optimization": {"stage": 2}}) == ["ShareMemCommBuilder"]
