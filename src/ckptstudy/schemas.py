"""Structured-config schemas of the metric families, derived from their `measure` signatures.

A family's parameters are declared once, as the keyword parameters of its `measure(ctx, ...)` (names and
types; an Enum annotation makes Hydra list the valid choices); their values live once, in
conf/metrics/<family>.yaml, whose defaults list names `<family>_schema`. Composition then refuses an
unknown parameter or a value of the wrong type before any job starts.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import MISSING

SUPPORTED = (int, float, bool, str)


def _field_type(annotation) -> Any:
    """The annotation when OmegaConf can check it (scalars, Enums, Optional scalars), else Any."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if len(args) == 1 else annotation
    checkable = base in SUPPORTED or (isinstance(base, type) and issubclass(base, Enum))
    return annotation if checkable else Any


def family_schema(name: str, target: str) -> type:
    """A dataclass with `_target_` and one MISSING field per parameter of the `measure` at `target`."""
    fn = get_method(target)
    hints = typing.get_type_hints(fn)
    fields = [("_target_", str, MISSING)]
    for param in inspect.signature(fn).parameters.values():
        if param.name != "ctx":
            fields.append((param.name, _field_type(hints.get(param.name, Any)), MISSING))
    return make_dataclass(f"{name.title().replace('_', '')}Params", fields)


def register_family_schemas(metrics_dir: Path) -> None:
    """Store `metrics/<family>_schema` (package `metrics.<family>`) for every conf/metrics/<family>.yaml."""
    store = ConfigStore.instance()
    for path in sorted(Path(metrics_dir).glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            node = family_schema(path.stem, target)
            store.store(group="metrics", name=f"{path.stem}_schema", node=node, package=f"metrics.{path.stem}")
