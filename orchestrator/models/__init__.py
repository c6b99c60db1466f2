"""Model registry: a ModelConfig becomes a transformers causal LM (random init or local checkpoint)."""
