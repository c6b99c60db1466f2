from orchestrator.redact import redact, redact_text, secret_values

ENV = {
    "WANDB_API_KEY": "abcdef0123456789",
    "HF_TOKEN": "hf_secretvalue",
    "AWS_SECRET_ACCESS_KEY": "aws/secret/value",
    "DB_PASSWORD": "hunter2hunter2",
    "MYAPIKEY": "not-a-word-match",
    "TOKENIZERS_PARALLELISM": "false",
    "USE_KEY": "1",
    "PATH": "/usr/bin:/bin",
}


def test_secret_names_are_matched_by_word_not_substring():
    assert set(secret_values(ENV)) == {"abcdef0123456789", "hf_secretvalue", "aws/secret/value", "hunter2hunter2"}


def test_redaction_masks_secrets_everywhere_and_leaves_the_rest():
    secrets = secret_values(ENV)
    config = {"logger": {"entity": "team-abcdef0123456789"}, "tags": ["hf_secretvalue", "x"], "lr": 0.1, "on": False}
    assert redact(config, secrets) == {"logger": {"entity": "team-***"}, "tags": ["***", "x"], "lr": 0.1, "on": False}
    assert redact_text("auto: false\npassword: hunter2hunter2\n", secrets) == "auto: false\npassword: ***\n"
