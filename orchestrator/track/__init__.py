"""Rank-0 tracking: metrics.jsonl (always) and Weights & Biases (online, offline or disabled)."""
