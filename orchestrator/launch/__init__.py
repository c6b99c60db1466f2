"""Backends that give the driver a Ray cluster: one module per backend."""
