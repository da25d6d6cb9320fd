"""YAML settings trees with defaults: the batch job's and the trainer's configs.

A config is a nested dict of defaults, updated by a YAML file and by ``key.sub=value`` overrides.
Unknown keys are errors (a typo must never fall back to a default silently); an empty mapping in
the defaults is free-form (its keys are not checked).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml


def merge(cfg: dict, data, source: str, error: type[Exception], prefix: str = "") -> None:
    """Update ``cfg`` in place with ``data``; ``source`` names where ``data`` came from."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping at {prefix or 'the top level'}")
    for k, v in data.items():
        if k not in cfg:
            raise error(f"{source}: unknown key {prefix + k!r} (known: {', '.join(prefix + x for x in cfg)})")
        if isinstance(cfg[k], dict) and cfg[k]:
            merge(cfg[k], v, source, error, prefix + k + ".")
        elif isinstance(cfg[k], dict):
            if not isinstance(v, dict):
                raise error(f"{source}: {prefix + k} must be a mapping")
            cfg[k].update(v)
        else:
            cfg[k] = v


def load_tree(defaults: dict, path: str | os.PathLike | None, overrides: list[str] | None,
              error: type[Exception], example: str) -> dict:
    """``defaults`` updated by the YAML file ``path`` (if any) and then by the overrides
    (``key.sub=value``, values parsed as YAML); ``example`` shows the override syntax in errors."""
    cfg = copy.deepcopy(defaults)
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(source).read_text()) or {}
        except OSError as err:
            raise error(f"{source}: cannot read the config ({type(err).__name__})") from err
        except yaml.YAMLError as err:
            raise error(f"{source}: not valid YAML ({' '.join(str(err).split())})") from err
        merge(cfg, data, source, error)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise error(f"--set {item!r}: use key.sub=value, e.g. {example}")
        node: dict = {}
        leaf = node
        parts = key.strip().split(".")
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = yaml.safe_load(value)
        merge(cfg, node, f"--set {item}", error)
    return cfg
