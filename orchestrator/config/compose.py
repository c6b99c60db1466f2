"""Compose the config with Hydra's compose API and turn every failure into a one-line problem.

We use the compose API rather than ``@hydra.main`` so that the driver owns error handling
(one line per problem, exit code 2, nothing written) and Hydra never creates output folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.config import distill_checks
from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError

_PACKAGE_CONF = Path(__file__).resolve().parents[1] / "conf"  # installed wheel
_REPO_CONF = Path(__file__).resolve().parents[2] / "conf"  # source checkout


def config_dir() -> Path:
    """The folder holding config.yaml and one sub-folder per config group."""
    return _PACKAGE_CONF if _PACKAGE_CONF.is_dir() else _REPO_CONF


def groups() -> dict[str, list[str]]:
    """Config group name -> its option names, read from the conf folder."""
    root = config_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def _quote_group_choices(overrides: list[str], group_names: set[str]) -> list[str]:
    """Hydra parses `zero=3` as the integer 3 and refuses it as a group choice; quote it."""
    quoted = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in group_names and re.fullmatch(r"[\w.\-]+", value):
            item = f"{key}='{value}'"
        quoted.append(item)
    return quoted


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:
        return False
    return True


def _problem_from_hydra(error: Exception, overrides: list[str], known: dict[str, list[str]]) -> str:
    """Rewrite a Hydra/OmegaConf exception as `key=value: what is wrong`."""
    from omegaconf.errors import OmegaConfBaseException

    text = str(error)
    if "LexerNoViableAltException" in text or "mismatched input" in text or "no viable alternative" in text:
        item = next((o for o in overrides if not _parses(o)), overrides[-1] if overrides else "")
        return (f"{item}: cannot parse the value; quote values with spaces or shell characters "
                "(key='a b'; lists: key=['a b','c'])")
    missing = re.search(r"Could not find '([\w\-]+)/([^']*)'", text)
    if missing:
        group, option = missing.groups()
        choices = ", ".join(known.get(group, []))
        return f"{group}={option}: no such option; choose one of: {choices}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        given = next((o for o in overrides if o.lstrip("+~").partition("=")[0] == key), None)
        reason = str(getattr(cause, "msg", "") or text).splitlines()[0]
        if "could not be converted to" in reason:
            wanted = reason.rsplit(" ", 1)[-1].lower()
            reason = f"expected {'an integer' if wanted == 'integer' else 'a ' + wanted}"
        if "not in" in reason or "Could not override" in text:
            return f"{key}: unknown key (see `orchestrator train --cfg job` for the valid keys)"
        return f"{given or key}: {reason}"
    first = text.splitlines()[0] if text else type(error).__name__
    return first


def strict_schema():
    """The schema as a DictConfig that refuses unknown keys, except in the maps whose keys are config keys."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    OmegaConf.set_struct(schema.sweep.params, False)
    OmegaConf.set_struct(schema.sweep.trial_overrides, False)
    return schema


def compose_dictconfig(overrides: list[str], resolve: bool = True):
    """Compose conf/config.yaml with the overrides into a typed DictConfig.

    `resolve=False` keeps interpolations such as data.cache_dir's `${oc.env:HOME}` for a job
    file that is resolved where the job runs (`orchestrator submit`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known = groups()
    malformed = [o for o in overrides if not re.match(r"^[+~]*[\w\-]+(\.[\w\-]+)*=", o)]
    if malformed:
        raise ConfigError([f"Error parsing override '{o}': expected key=value (e.g. train.max_steps=100)"
                           for o in malformed])
    overrides = _quote_group_choices(list(overrides), set(known))
    ConfigStore.instance().store(name="base_config", node=Config)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError([f"{key}: required, set it on the command line ({key}=...)" for key in missing])
        # Merging into the struct-mode schema refuses keys added with `+key=...`.
        cfg = OmegaConf.merge(strict_schema(), OmegaConf.to_container(cfg))  # plain dict: struct checks apply
        if resolve:
            OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise ConfigError([_problem_from_hydra(error, overrides, known)]) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def load_job_file(path: str, overrides: list[str]):
    """A whole config from a YAML file (a job file or a run's config.yaml) plus key=value overrides.

    Config groups were already chosen when the file was written, so only plain keys can be
    overridden here; unknown keys and wrong types are refused as in compose().
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError([f"--config {path}: no such file"])
    groups_named = [o for o in overrides if o.partition("=")[0] in groups()]
    if groups_named:
        raise ConfigError([f"{o}: config groups are fixed by --config {path}; override single keys "
                           f"(e.g. cluster.num_workers=4) or compose without --config" for o in groups_named])
    malformed = [o for o in overrides if not re.match(r"^[\w\-]+(\.[\w\-]+)*=", o)]
    if malformed:
        raise ConfigError([f"Error parsing override '{o}': expected key=value (e.g. train.max_steps=100)"
                           for o in malformed])
    try:
        cfg = OmegaConf.merge(strict_schema(), OmegaConf.load(file), OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.resolve(cfg)
    except (OmegaConfBaseException, ValueError) as error:
        raise ConfigError([_problem_from_hydra(error, overrides, groups())]) from None
    except Exception as error:  # a YAML syntax error names the file and line
        raise ConfigError([f"--config {path}: {str(error).splitlines()[0]}"]) from None
    return cfg


def compose(overrides: list[str], config_file: str | None = None) -> Config:
    """Compose (or load config_file), type-check and validate. Raises ConfigError listing every problem."""
    from omegaconf import OmegaConf

    dictconfig = load_job_file(config_file, overrides) if config_file else compose_dictconfig(overrides)
    return validated(OmegaConf.to_object(dictconfig))  # type: ignore[arg-type]


def validated(cfg: Config) -> Config:
    from orchestrator.config.validate import validate

    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return distill_checks.with_the_teacher(_with_the_models_tokenizer(cfg))


def _with_the_models_tokenizer(cfg: Config) -> Config:
    """A pretrained model folder that brings a tokenizer reads its data through it (unless data.tokenizer_path
    names another): its token ids are the only ones its embeddings know."""
    import dataclasses

    from orchestrator.config.model_folder import has_tokenizer

    folder = cfg.model.pretrained_path
    if folder is None or cfg.data.tokenizer_path is not None or not has_tokenizer(Path(folder).expanduser()):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer_path=folder))


def to_yaml(cfg) -> str:
    """A Config (or a DictConfig, interpolations kept) as YAML, as written to <run_dir>/config.yaml."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    """Plain JSON-serialisable dict (enums as their values), for workers and trackers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def from_dict(data: dict) -> Config:
    """Inverse of to_dict: rebuild typed instances inside a worker."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))  # type: ignore[return-value]
