"""Checkpoints: which steps exist, step -> hub revision or local directory, loading, weight hashes."""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptstudy.suite_spec import spec_from_config

log = logging.getLogger(__name__)

PYTHIA_STEPS: list[int] = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resolved or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class CheckpointSource:
    """Where one (model, step) comes from: a hub repo + revision, or a local directory."""

    model: str
    step: int
    kind: str  # hub | local
    location: str  # repo id or directory
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.location}@{self.revision}" if self.kind == "hub" else self.location


def available_steps(model_cfg, root: str | Path | None = None) -> list[int]:
    """The steps this model has checkpoints for, sorted."""
    kind = model_cfg.checkpoints
    if kind == "pythia":
        return list(PYTHIA_STEPS)
    if kind == "list":
        if not model_cfg.steps:
            raise ValueError(f"model.checkpoints=list needs model.steps (model {model_cfg.name!r})")
        return sorted(int(s) for s in model_cfg.steps)
    if kind == "suite":
        return spec_from_config(model_cfg).checkpoint_steps()
    raise ValueError(f"model.checkpoints={kind!r} is not valid; choose one of pythia, suite, list")


def nearest_steps(step: int, steps: list[int], k: int = 3) -> list[int]:
    """Up to `k` valid steps closest to `step` (for error messages)."""
    i = bisect.bisect_left(steps, step)
    window = steps[max(0, i - k) : i + k]
    return sorted(sorted(window, key=lambda s: (abs(s - step), s))[:k])


def resolve_step(step, steps: list[int], model: str) -> int:
    """Turn the `step` config value (int, "final", None) into a checkpoint step, or refuse it."""
    if step is None or (isinstance(step, str) and step.lower() in {"final", "last"}):
        return steps[-1]
    if isinstance(step, str) and step.lower() in {"first"}:
        return steps[0]
    try:
        value = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"step={step!r} is not a step number, 'first' or 'final' (model {model!r})") from None
    if value not in steps:
        raise ValueError(
            f"step={value} is not a checkpoint of model {model!r}; nearest valid steps: "
            f"{nearest_steps(value, steps)} (the model has {len(steps)} checkpoints, {steps[0]}..{steps[-1]})"
        )
    return value


def source_for(model_cfg, step: int) -> CheckpointSource:
    """Resolve (model, step) to a hub revision or a local directory."""
    if model_cfg.source == "hub":
        if not model_cfg.repo:
            raise ValueError(f"model.repo is required for model.source=hub (model {model_cfg.name!r})")
        return CheckpointSource(model_cfg.name, step, "hub", model_cfg.repo, model_cfg.revision.format(step=step))
    if model_cfg.source == "local":
        if not model_cfg.path:
            raise ValueError(f"model.path is required for model.source=local (model {model_cfg.name!r})")
        return CheckpointSource(model_cfg.name, step, "local", model_cfg.path.format(step=step))
    raise ValueError(f"model.source={model_cfg.source!r} is not valid; choose one of hub, local")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0"}


def _hub_is_cached(repo: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    return isinstance(found, str)


def _from_pretrained_kwargs(source: CheckpointSource) -> tuple[str, dict]:
    if source.kind == "local":
        directory = Path(source.location)
        if not (directory / "config.json").exists():
            raise CheckpointError(
                f"missing checkpoint for {source.model} step {source.step}: no config.json in {directory}"
            )
        return str(directory), {}
    local_only = hub_offline() or _hub_is_cached(source.location, source.revision)
    if not local_only and not _hub_reachable():
        from huggingface_hub import constants

        raise CheckpointError(
            f"{source.location} revision {source.revision} is not in the local HF cache ({constants.HF_HUB_CACHE}) "
            f"and {constants.ENDPOINT} cannot be reached; {_HOW_TO_FIX.format(s=source)}"
        )
    return source.location, {"revision": source.revision, "local_files_only": local_only}


_HOW_TO_FIX = (
    "pre-download it on a machine with network (`hf download {s.location} --revision {s.revision}`), "
    "copy the HF cache here (or point HF_HUB_CACHE at it), and set HF_HUB_OFFLINE=1"
)


@functools.cache
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection: a fast check instead of minutes of retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_checkpoint(source: CheckpointSource, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load model (eager attention, eval mode) and tokenizer for one checkpoint.

    Hub sources use the HF cache, with `local_files_only` when offline or already cached,
    so a machine without network fails fast with a message that names repo and revision.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name, kwargs = _from_pretrained_kwargs(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="eager", dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(_load_failure_message(source, kwargs, err)) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _load_failure_message(source: CheckpointSource, kwargs: dict, err: Exception) -> str:
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if source.kind == "local":
        return f"cannot load checkpoint {source.model} step {source.step} from {source.location}: {reason}"
    how = _HOW_TO_FIX.format(s=source)
    if kwargs.get("local_files_only"):
        return f"checkpoint {source.location} revision {source.revision} is not in the local HF cache ({reason}); {how}"
    return f"cannot fetch {source.location} revision {source.revision} from the hub ({reason}); {how}"


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer in the state dict, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()
