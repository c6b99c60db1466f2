"""Keep secrets out of everything we write: config.yaml, the W&B config, logs, launch scripts.

A secret is the value of any environment variable whose name has KEY, TOKEN, SECRET or
PASSWORD as one of its `_`-separated words (WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY,
DB_PASSWORD; not TOKENIZERS_PARALLELISM). Values shorter than 8 characters are ignored: they
are flags (USE_KEY=1, ..._TOKEN=false), and masking "1" or "false" would mangle everything else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_NAME = re.compile(r"(^|_)(API)?(KEY|TOKEN|SECRET|PASSWORD|PASSWD)S?(_|$)", re.IGNORECASE)
MASK = "***"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


def redact(value, secrets: list[str] | None = None):
    """A copy of value (dicts, lists, strings) with every secret replaced by ***."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value
