"""Checkpoints: which steps exist, step -> hub revision or local directory, loading, weight hashes.

Loading is split so that everything cheap and refusable happens before the weights are read:
`inspect_checkpoint` (config.json: an architecture with an adapter, `ckptstudy.model.arch`; weight files: not
truncated, no code-running pickles), then `load_tokenizer` (EOS and BOS tokens), then `load_model`. Nothing is
ever unpickled beyond tensors (`weights_only`), and remote code is never trusted (`trust_remote_code=False`).

A model's steps, repo and branch names come from its yaml (`model.checkpoints`, `steps`, `step_ranges`,
`branch_tokens`, `repo` / `repo_by_seed` with {seed}, `revision` with {step}, {tokens}, {seed}); its training
run is `model.seed` (`run_name`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptstudy.model import arch
from ckptstudy.model.suite_spec import spec_from_config

log = logging.getLogger(__name__)

PYTHIA_STEPS: list[int] = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resolved or loaded; the message says how to fix it."""


class UnsafeCheckpointError(CheckpointError):
    """A weights file whose pickle would import or call more than tensors: refused, never unpickled."""


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
        steps = listed_steps(model_cfg)
        if not steps:
            raise ValueError(
                f"model.checkpoints=list needs model.steps, model.step_ranges or model.branch_tokens "
                f"(model {model_cfg.name!r})"
            )
        return steps
    if kind == "suite":
        return spec_from_config(model_cfg).checkpoint_steps()
    raise ValueError(f"model.checkpoints={kind!r} is not valid; choose one of pythia, suite, list")


def listed_steps(model_cfg) -> list[int]:
    """The union of `model.steps`, the `model.step_ranges` ([first, last, every], last included) and the steps of
    `model.branch_tokens`, sorted."""
    steps = {int(s) for s in model_cfg.get("steps") or []}
    for entry in model_cfg.get("step_ranges") or []:
        if len(entry) != 3 or int(entry[2]) < 1 or int(entry[1]) < int(entry[0]):
            raise ValueError(
                f"model.step_ranges entry {list(entry)} of model {model_cfg.name!r} is not valid; each entry is "
                "[first, last, every] with last >= first and every >= 1"
            )
        steps.update(range(int(entry[0]), int(entry[1]) + 1, int(entry[2])))
    steps.update(int(step) for step, _tokens in branch_tokens(model_cfg).items())
    return sorted(steps)


def branch_tokens(model_cfg) -> dict[int, int]:
    """{step: tokens} from `model.branch_tokens` ([step, tokens] pairs: the token count a branch name carries)."""
    out = {}
    for entry in model_cfg.get("branch_tokens") or []:
        if len(entry) != 2:
            raise ValueError(
                f"model.branch_tokens entry {list(entry)} of model {model_cfg.name!r} is not valid; each entry is "
                "[step, tokens]"
            )
        out[int(entry[0])] = int(entry[1])
    return out


def run_name(model_cfg) -> str:
    """The name of one training run of a model: its name, with `@seed<k>` when `model.seed` is a seed other than 0
    (seed 0 is each suite's reference run: the original Pythia, the micro recipe's own seed). Records, sweep
    directories and W&B runs are named by it; the record also stores the seed itself."""
    seed = model_cfg.get("seed")
    return model_cfg.name if seed in (None, 0) else f"{model_cfg.name}@seed{int(seed)}"


def repo_for(model_cfg) -> str:
    """The hub repo of the configured run: `model.repo_by_seed[seed]`, else `model.seed_repo` with {seed} for a seed
    other than 0, else `model.repo` (the reference run)."""
    seed = model_cfg.get("seed")
    by_seed = model_cfg.get("repo_by_seed") or {}
    if seed is not None and seed in by_seed:
        return str(by_seed[seed])
    if seed not in (None, 0) and model_cfg.get("seed_repo"):
        return model_cfg.seed_repo.format(seed=seed)
    if not model_cfg.repo:
        raise ValueError(f"model.repo is required for model.source=hub (model {model_cfg.name!r})")
    return model_cfg.repo.format(seed=seed)


def revision_for(model_cfg, step: int) -> str:
    """The branch name of `step`: `model.revision` with {step}, {tokens} (from `model.branch_tokens`) and {seed}."""
    template = model_cfg.revision
    fields = {"step": step, "seed": model_cfg.get("seed")}
    if "{tokens}" in template:
        tokens = branch_tokens(model_cfg)
        if step not in tokens:
            raise ValueError(
                f"model.revision={template!r} needs the token count of step {step}, which model.branch_tokens of "
                f"model {model_cfg.name!r} does not give"
            )
        fields["tokens"] = tokens[step]
    return template.format(**fields)


def check_model_config(model_cfg) -> None:
    """Refuse a model block whose checkpoints cannot be named, before anything is resolved: an unknown
    architecture, a seed the suite does not have, a repo or revision template missing what it needs, a
    step list entry of the wrong form, an architecture the suite recipe does not build."""
    family = getattr(model_cfg.arch, "value", model_cfg.arch)
    arch.for_family(family)
    seed, seeds = model_cfg.get("seed"), model_cfg.get("seeds")
    if seeds is not None and seed not in list(seeds):
        raise ValueError(f"model.seed={seed} is not a training run of model {model_cfg.name!r}; valid: {sorted(seeds)}")
    templates = " ".join(str(model_cfg.get(k) or "") for k in ("repo", "seed_repo", "path"))
    if seed not in (None, 0) and seeds is None and model_cfg.checkpoints != "suite" and "{seed}" not in templates:
        raise ValueError(
            f"model.seed={seed} is not valid: model {model_cfg.name!r} has one training run (its yaml gives no "
            "model.seeds and no repo or path template with {seed}); valid: null or 0"
        )
    if model_cfg.checkpoints == "list":
        steps = available_steps(model_cfg)
        if model_cfg.source == "hub":
            for step in (steps[0], steps[-1]):
                revision_for(model_cfg, step)
            missing = [s for s in steps if "{tokens}" in model_cfg.revision and s not in branch_tokens(model_cfg)]
            if missing:
                raise ValueError(
                    f"model.revision={model_cfg.revision!r} needs a token count for every step; model.branch_tokens "
                    f"of model {model_cfg.name!r} lacks steps {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                )
    if model_cfg.source == "hub":
        repo_for(model_cfg)
    if model_cfg.checkpoints == "suite":
        recipe = (model_cfg.get("suite") or {}).get("arch")
        if recipe is not None and recipe != family:
            raise ValueError(
                f"model.arch={family} but the suite recipe builds model.suite.arch={recipe} (model {model_cfg.name!r})"
            )


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
    name = run_name(model_cfg)
    if model_cfg.source == "hub":
        return CheckpointSource(name, step, "hub", repo_for(model_cfg), revision_for(model_cfg, step))
    if model_cfg.source == "local":
        if not model_cfg.path:
            raise ValueError(f"model.path is required for model.source=local (model {model_cfg.name!r})")
        return CheckpointSource(name, step, "local", model_cfg.path.format(step=step, seed=model_cfg.get("seed")))
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
    """Load model (SDPA attention, eval mode) and tokenizer for one checkpoint, after `inspect_checkpoint`.

    Hub sources use the HF cache, with `local_files_only` when offline or already cached,
    so a machine without network fails fast with a message that names repo and revision.
    """
    inspect_checkpoint(source)
    tokenizer = load_tokenizer(source)
    return load_model(source, device, dtype), tokenizer


def _where(source: CheckpointSource) -> str:
    return f"{source.model} step {source.step} ({source.describe()})"


def checkpoint_dir(source: CheckpointSource) -> Path | None:
    """The directory holding the checkpoint's files: the local directory, or the hub revision's snapshot
    in the HF cache when cached (None when not cached: nothing to look at before downloading)."""
    if source.kind == "local":
        return Path(source.location)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
    return Path(found).parent if isinstance(found, str) else None


def read_model_config(source: CheckpointSource) -> dict:
    """The checkpoint's config.json as a dict (read, not instantiated: cheap, and no model class runs)."""
    from transformers.utils import cached_file

    name, kwargs = _from_pretrained_kwargs(source)
    try:
        path = cached_file(name, "config.json", **kwargs)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(_load_failure_message(source, kwargs, err)) from err
    if path is None:
        raise CheckpointError(f"missing checkpoint for {_where(source)}: no config.json")
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"config.json of {_where(source)} cannot be read ({path}): {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"config.json of {_where(source)} is not a JSON object ({path})")
    return config


def check_architecture(config: dict, source: CheckpointSource, family: str | None = None) -> arch.Architecture:
    """The adapter of the checkpoint's config.json `model_type`; refused (CheckpointError listing the supported
    architectures) when there is none, or when it is not of `family` (the model yaml's `arch`)."""
    model_type = config.get("model_type")
    try:
        found = arch.for_model_type(model_type, f"{_where(source)}: config.json")
    except arch.UnsupportedModelError as err:
        raise CheckpointError(str(err)) from None
    if family is not None and found.family != family:
        raise CheckpointError(
            f"{_where(source)}: config.json has model_type {model_type!r} (architecture {found.family}), but the "
            f"model yaml says model.arch={family}; set model.arch={found.family}"
        )
    return found


def inspect_checkpoint(source: CheckpointSource, family: str | None = None) -> dict:
    """Everything refusable before the weights load, cheaply: config.json is readable and of an architecture
    with an adapter (of `family` when given: the model yaml's `arch`), and the weight files (when they are on
    disk) are neither truncated nor code-running pickles.

    Returns the config.json dict. Raises CheckpointError naming the file and what is wrong with it.
    """
    config = read_model_config(source)
    check_architecture(config, source, family)
    directory = checkpoint_dir(source)
    if directory is not None:
        check_weight_files(directory, source)
    return config


def check_weight_files(directory: Path, source: CheckpointSource | None = None) -> None:
    """safetensors files: the header parses and the file holds every byte it promises (not truncated);
    without safetensors, every `*.bin` must unpickle with tensors only (`torch.load(weights_only=True)`)."""
    where = _where(source) if source is not None else str(directory)
    safetensors = sorted(directory.glob("*.safetensors"))
    bins = sorted(directory.glob("*.bin"))
    if not safetensors and not bins:
        raise CheckpointError(f"no weights file (*.safetensors or *.bin) in {directory} for {where}")
    for path in safetensors:
        problem = safetensors_problem(path)
        if problem:
            raise CheckpointError(f"weights file {path} of {where} is corrupt or truncated: {problem}")
    if not safetensors:
        for path in bins:
            check_pickle_is_weights_only(path, where)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, reading only its header (None when it is sound)."""
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
    sizes.update({"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8})
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                return f"header length {n} does not fit in the file ({size} bytes)"
            header = json.loads(handle.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"header unreadable ({type(err).__name__}: {err})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            count = math.prod(int(d) for d in info["shape"])
            width = sizes.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has a malformed header entry"
        if stop < start or (width is not None and stop - start != count * width):
            return f"tensor {name!r} has data offsets {start}..{stop} that do not match its shape and dtype"
        end = max(end, stop)
    if size != 8 + n + end:
        return f"the header promises {8 + n + end} bytes, the file has {size}"
    return None


def check_pickle_is_weights_only(path: Path, where: str = "") -> None:
    """Refuse a pickled weights file that would import or call anything but tensors and containers.

    `torch.load(weights_only=True)` runs torch's restricted unpickler: a `__reduce__` payload (os.system,
    open, ...) is refused before it runs. mmap keeps the tensor bytes on disk.
    """
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mmap
    except pickle.UnpicklingError as err:
        first = next((line for line in str(err).splitlines() if "Unsupported" in line or "global" in line), "")
        raise UnsafeCheckpointError(
            f"weights file {path} of {where} was refused as unsafe: its pickle would import or call more than "
            f"tensors ({first.strip() or type(err).__name__}); it was not unpickled. Convert trusted weights "
            "to safetensors"
        ) from err
    except Exception as err:
        raise CheckpointError(f"weights file {path} of {where} cannot be read: {type(err).__name__}: {err}") from err


def load_tokenizer(source: CheckpointSource, bos_from_eos: bool = False):
    """The checkpoint's tokenizer, refused without EOS or BOS token (padding and probe starts need them); with
    `bos_from_eos` (config `model.bos_from_eos`), a tokenizer without BOS gets its EOS token as BOS."""
    from transformers import AutoTokenizer

    name, kwargs = _from_pretrained_kwargs(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False, **kwargs)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(_load_failure_message(source, kwargs, err)) from err
    if bos_from_eos and tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.bos_token = tokenizer.eos_token
    check_special_tokens(tokenizer, source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_special_tokens(tokenizer, source: CheckpointSource) -> None:
    missing = [kind for kind in ("eos", "bos") if getattr(tokenizer, f"{kind}_token_id", None) is None]
    if missing:
        names = " and ".join(k.upper() for k in missing)
        raise CheckpointError(
            f"the tokenizer of {_where(source)} has no {names} token ({', '.join(f'{k}_token=None' for k in missing)});"
            " ckptstudy needs both (EOS pads batches, BOS starts the random-repeat probes): set them in its "
            "tokenizer_config.json (Pythia: <|endoftext|> for both)"
        )


def load_model(source: CheckpointSource, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The model (SDPA attention, eval mode): tensors only (`weights_only`), no remote code. No pass needs
    materialised attention weights (the statistics come from a fused kernel, `measure.attention_stats`); eager
    attention is only the tests' reference (`ckptstudy.reference`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name, kwargs = _from_pretrained_kwargs(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, attn_implementation="sdpa", dtype=dtype, trust_remote_code=False, weights_only=True, **kwargs
        )
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(_load_failure_message(source, kwargs, err)) from err
    return model.to(device).eval()


def nonfinite_weights(model: torch.nn.Module) -> dict[str, int]:
    """{tensor name: count} of NaN/inf values in the model's parameters and buffers (empty when all finite)."""
    bad = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    return bad


class ActivationGuard:
    """Forward hooks on each decoder layer and the unembedding that count the calls whose output holds
    NaN/inf (counted on the device: no synchronisation per call). Use as a context manager."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.counts: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def modules(self) -> list[tuple[str, torch.nn.Module]]:
        out = []
        names = {module: name for name, module in self.model.named_modules()}
        base = getattr(self.model, "base_model", self.model)
        layers = getattr(base, "layers", None) or getattr(base, "h", None) or []
        out += [(names.get(layer, f"layers.{i}"), layer) for i, layer in enumerate(layers)]
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is not None:
            out.append((names.get(head, "lm_head"), head))
        return out

    def _hook(self, name: str):
        def hook(_module, _args, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                bad = (~torch.isfinite(tensor)).any().to(torch.int64)
                self.counts[name] = self.counts[name] + bad if name in self.counts else bad

        return hook

    def __enter__(self) -> ActivationGuard:
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def nonfinite(self) -> dict[str, int]:
        """{module name: forward calls whose output held NaN/inf}, for the modules where any did."""
        return {name: int(count) for name, count in self.counts.items() if int(count)}


def _load_failure_message(source: CheckpointSource, kwargs: dict, err: Exception) -> str:
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if source.kind == "local":
        return f"cannot load checkpoint {source.model} step {source.step} from {source.location}: {reason}"
    how = _HOW_TO_FIX.format(s=source)
    if kwargs.get("local_files_only"):
        return f"checkpoint {source.location} revision {source.revision} is not in the local HF cache ({reason}); {how}"
    return f"cannot fetch {source.location} revision {source.revision} from the hub ({reason}); {how}"


HASH_THREADS = 4
WEIGHTS_HASH_VERSION = 2  # 1: sha256 over (name, raw bytes) in name order; 2: sha256 over the per-tensor hashes


@dataclass(frozen=True)
class WeightHashes:
    """What `hash_weights` records of a loaded checkpoint."""

    tensors: dict[str, str]  # parameter name -> sha256 of its dtype, shape and bytes
    constant: list[str]  # parameters whose elements are all equal (e.g. a LayerNorm weight still at 1)
    weights_sha256: str  # sha256 over every state-dict tensor's (name, hash), in name order


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (the bytes are hashed in place, without a copy)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def is_constant(tensor: torch.Tensor) -> bool:
    """Whether every element equals the first (cheap for trained tensors: first and last differ)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() < 2 or not bool(flat[0] == flat[-1]):
        return flat.numel() == 1
    return bool((flat == flat[0]).all())


def hash_weights(model: torch.nn.Module, threads: int | None = None) -> WeightHashes:
    """A sha256 per state-dict tensor (one pass over the weights, `threads` tensors at once: hashlib releases
    the GIL), kept for the parameters.

    Buffers (non-trained tensors such as masks) enter `weights_sha256` but are not kept per tensor: the
    per-tensor integrity check compares parameters only. The hashes depend on the loaded dtype (it is hashed).
    """
    params = {name for name, _ in model.named_parameters()}
    state = model.state_dict()
    workers = threads or min(HASH_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = dict(zip(state, pool.map(tensor_sha256, state.values())))
    whole = hashlib.sha256()
    for name in sorted(hashes):
        whole.update(f"{name}\0{hashes[name]}\n".encode())
    constant = sorted(name for name in params if name in state and is_constant(state[name]))
    return WeightHashes({k: v for k, v in sorted(hashes.items()) if k in params}, constant, whole.hexdigest())


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (`WEIGHTS_HASH_VERSION` 2: over their per-tensor hashes)."""
    return hash_weights(model).weights_sha256
