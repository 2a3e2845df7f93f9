"""Architecture adapters: one module per family (`neox`, `llama`, `gpt2`) says where a model's parts are; this
module finds the adapter of a model or of a config.json `model_type`, and refuses any other architecture with a
message that lists the supported ones."""

from __future__ import annotations

from ckptstudy.model.arch.base import Architecture, ModelParts, UnsupportedModelError
from ckptstudy.model.arch.gpt2 import GPT2
from ckptstudy.model.arch.llama import LLAMA, OLMO2
from ckptstudy.model.arch.neox import NEOX

ARCHITECTURES: tuple[Architecture, ...] = (NEOX, LLAMA, OLMO2, GPT2)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(a.family for a in ARCHITECTURES))
BY_MODEL_TYPE: dict[str, Architecture] = {t: a for a in ARCHITECTURES for t in a.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(BY_MODEL_TYPE)

__all__ = ["ARCHITECTURES", "FAMILIES", "SUPPORTED_MODEL_TYPES", "Architecture", "ModelParts", "UnsupportedModelError"]


def supported() -> str:
    """The supported model types by family, for error messages: `gpt_neox (gpt_neox); llama (llama, olmo, ...)`."""
    by_family: dict[str, list[str]] = {}
    for a in ARCHITECTURES:
        by_family.setdefault(a.family, []).extend(a.model_types)
    return "; ".join(f"{family} ({', '.join(types)})" for family, types in by_family.items())


def for_model_type(model_type: str | None, where: str = "the model") -> Architecture:
    """The adapter of a config.json `model_type`; UnsupportedModelError naming it and the supported ones."""
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    raise UnsupportedModelError(
        f"{where} has model_type {model_type!r}, an architecture ckptstudy has no adapter for; supported "
        f"families (model types): {supported()}"
    )


def for_family(family: str) -> Architecture:
    """The (first) adapter of a family (a model yaml's `arch`); ValueError listing the families."""
    for candidate in ARCHITECTURES:
        if candidate.family == family:
            return candidate
    raise ValueError(
        f"model.arch={family!r} is not an architecture ckptstudy has an adapter for; choose one of "
        f"{', '.join(FAMILIES)}"
    )


def of(model) -> Architecture:
    """The adapter of a loaded model (from its config's `model_type`)."""
    config = getattr(model, "config", None)
    return for_model_type(getattr(config, "model_type", None), f"{type(model).__name__}")


def model_parts(model) -> ModelParts:
    """The hookable parts of a loaded causal LM, or UnsupportedModelError listing the supported architectures."""
    return of(model).parts(model)
