"""The resident launchers' pure parts: which environments a launcher may serve, the messages that carry a
process's descriptors, and when a command does not try a launcher at all (launch/resident.py, handover.py)."""

from __future__ import annotations

import os
import socket
import sys

import psutil

from orchestrator.launch import handover, resident

ENV = {"PATH": "/usr/bin", "HOME": "/root", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "token"}
PATH = ["/somewhere/bin", "/lib/python3.11", "/site-packages"]


def key(kind: str = "command", env: dict | None = None, path: list[str] | None = None) -> str:
    return resident.environment_key(kind, sys.executable, path or PATH, env or ENV)


def test_a_variable_the_libraries_read_as_they_import_picks_another_launcher():
    assert key(env={**ENV, "OMP_NUM_THREADS": "2"}) != key()  # OpenMP reads it as torch loads
    assert key(env={**ENV, "HF_HOME": "/elsewhere"}) != key()
    assert key(env={**ENV, "RAY_AUTH_MODE": "none"}) != key()  # a command's launcher imported Ray
    assert key("worker") != key()


def test_what_is_read_later_or_only_by_ray_in_a_worker_does_not():
    assert key(env={**ENV, "TERM": "dumb", "WANDB_MODE": "offline", "PWD": "/tmp"}) == key()
    assert key(env={**ENV, "RAY_JOB_ID": "05000000", "RAY_ADDRESS": "127.0.0.1:1"}) == key()
    # A worker's launcher imports no Ray: none of Ray's variables matter, the job id included.
    assert key("worker", env={**ENV, "RAY_AUTH_MODE": "none", "RAY_JOB_ID": "07000000"}) == key("worker")
    assert key(path=["/another/script/folder", *PATH[1:]]) == key()  # path[0] is set per copy
    assert key(path=[PATH[0], "/extra", *PATH[1:]]) != key()


def test_a_process_that_sees_a_gpu_is_never_a_copy():
    assert resident.gpu_process({"CUDA_VISIBLE_DEVICES": "0"})
    assert not resident.gpu_process({"CUDA_VISIBLE_DEVICES": ""}) and not resident.gpu_process({})


def test_a_message_carries_the_descriptors_and_any_length():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    message = {"env": {f"VAR{i}": "x" * 100 for i in range(2000)}, "argv": ["orchestrator", "train"]}  # ~250 KB
    with left, right:
        import threading

        sender = threading.Thread(target=resident.send, args=(left, message, [write_end]))
        sender.start()
        received, fds = resident.receive(right)
        sender.join()
    assert received == message and len(fds) == 1
    os.write(fds[0], b"through the copy's descriptor")
    assert os.read(read_end, 100) == b"through the copy's descriptor"
    for fd in (read_end, write_end, *fds):
        os.close(fd)


def test_a_command_runs_here_when_no_launcher_runs_or_it_is_not_one_they_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path))  # nothing listens for this folder
    assert handover.hand_over(["orchestrator", "train"]) is None
    assert handover.hand_over(["orchestrator", "compare", "runs/a"]) is None
    monkeypatch.setenv("ORCHESTRATOR_NO_LAUNCHER", "1")
    assert handover.hand_over(["orchestrator", "plan"]) is None


def test_the_command_start_time_is_the_process_start_psutil_reads():
    assert abs(handover._process_start() - psutil.Process().create_time()) < 0.05
