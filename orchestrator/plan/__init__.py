"""The planning stage: config in, a frozen job description out. Pure Python, no torch, Ray or DeepSpeed,
so `orchestrator plan`, `--help` and config errors answer at once.

plan.py      world size, batch arithmetic, parameters, FLOPs, memory fit, the ZeRO stage `zero=auto` picks
memory.py    per-rank memory model (model states, activations, buffers)
job.py       resolve: config (and a resume) -> Job(config, plan, DeepSpeed config), once per command
deepspeed.py the DeepSpeed config dict rendered from config and plan
mfu.py       MFU/HFU formulas and the accelerators' peak table
hardware.py  hardware presets (peak FLOP/s, links, storage, MTBF, cost) for the at-scale figures
scale.py     step time, communication, checkpoint cost, goodput, wall time and cost at scale
calibrate.py the at-scale figures from a finished run's measurements
command.py   the `orchestrator plan` command
"""
