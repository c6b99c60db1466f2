"""Config composition (Hydra), the typed schema and validation."""
