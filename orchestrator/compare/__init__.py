"""`orchestrator compare`: runs and sweeps side by side, read from their folders (see command.py)."""
