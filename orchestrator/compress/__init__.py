"""Compression: pruning and quantization passes on the models this tool trains.

`passes.py` turns `compress.passes` into pass objects (check, then apply); `pruning.py` and
`quantization.py` hold what the passes do (torch's pruning utilities and torchao);
`surgery.py` the model rewrites they need; `measure.py` quality, size and speed;
`artifact.py` saving and reloading; `command.py` runs `orchestrator compress`; `masks.py`
prunes during training through the loop's hook points.
"""
