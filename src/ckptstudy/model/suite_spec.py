"""What a micro suite is: its recipe (`SuiteSpec`), the steps it saves, where its checkpoints live and
whether a directory holds a finished build of it.

A suite lives outside the results (`paths.root`): by default in the user's cache directory, one directory
per recipe (`<cache>/ckptstudy/suites/<name>-<recipe hash>`), so clones on one machine share a build and
another recipe never overwrites it. `CKPTSTUDY_SUITE_DIR` or `paths.suite` names another directory.

No heavy imports: `checkpoints.py` asks this module which steps a suite model has without loading torch
models or tokenizers. Building a suite (corpus, tokenizer, training loop) is `ckptstudy.model.suite`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SUITE_DIR_ENV = "CKPTSTUDY_SUITE_DIR"  # the directory of the suite to build and read (overrides the cache layout)
MANIFEST = "suite.json"  # written last by a build: its presence with the recipe's hash marks a finished build
BUILD_HINT = (
    "build it with `make suite` (or `.venv/bin/ckptstudy-suite <the same overrides>` for another paths.suite or "
    "recipe); a job never trains the suite"
)


@dataclass
class SuiteSpec:
    """Everything that determines a micro suite; its hash names the build."""

    # the values live in conf/model/<suite>.yaml (`model.suite`); see its comments
    name: str
    seed: int
    # model
    arch: str  # the architecture built (a family of `ckptstudy.model.arch`: gpt_neox, llama, gpt2)
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int | None  # MLP width; None = the family's (4 d_model for GELU, 8/3 d_model rounded up for SwiGLU)
    rotary_pct: float | None  # share of head dimensions rotated (GPT-NeoX; Llama-style: 1.0; GPT-2: None)
    vocab_size: int
    max_position_embeddings: int  # = seq_len: the context the suite is trained on
    # data
    text_glob: str
    max_chars: int
    seq_len: int
    batch_size: int
    span_min: int
    span_max: int
    # curriculum: [until_step, share of batch rows that are a repeated span, share of those spans that
    # are natural text (the rest: random tokens); the third value may be left out (= 0)]
    phases: list[list[float]]
    # optimisation
    lr: float
    warmup_steps: int
    weight_decay: float
    # checkpoints: step 0, powers of two up to log_until, then every `every` to the end
    log_until: int
    every: int

    @property
    def total_steps(self) -> int:
        return int(self.phases[-1][0])

    def checkpoint_steps(self) -> list[int]:
        """The steps at which checkpoints are saved (sorted, unique)."""
        steps = {0}
        power = 1
        while power <= min(self.log_until, self.total_steps):
            steps.add(power)
            power *= 2
        steps.update(range(self.every * (self.log_until // self.every + 1), self.total_steps + 1, self.every))
        steps.add(self.total_steps)
        return sorted(steps)

    def phase(self, step: int) -> tuple[float, float]:
        """(share of rows that are repeated spans, share of those that are natural text) at `step`."""
        for entry in self.phases:
            if step < entry[0]:
                break
        return float(entry[1]), float(entry[2]) if len(entry) > 2 else 0.0

    def repeat_share(self, step: int) -> float:
        return self.phase(step)[0]

    def spec_hash(self) -> str:
        """The recipe's hash (it names the build directory). Keys added after the first builds enter it only when
        they differ from what those builds used (`HASH_NEUTRAL`), so existing builds keep their directory."""
        fields = {k: v for k, v in asdict(self).items() if not (k in HASH_NEUTRAL and v == HASH_NEUTRAL[k])}
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# recipe keys added after builds existed, at the value those builds had: left out of the hash at that value
HASH_NEUTRAL = {"arch": "gpt_neox", "d_ff": None}


def spec_from_config(model_cfg) -> SuiteSpec:
    """The SuiteSpec of a `checkpoints: suite` model config: its `model.suite` recipe, every key given."""
    overrides = dict(model_cfg.get("suite") or {})
    overrides.setdefault("name", model_cfg.name)
    try:
        return SuiteSpec(**{k: ([list(p) for p in v] if k == "phases" else v) for k, v in overrides.items()})
    except TypeError as err:
        valid = ", ".join(SuiteSpec.__dataclass_fields__)
        raise ValueError(f"model.suite of {model_cfg.name!r}: {err}; valid keys: {valid}") from None


def cache_home() -> Path:
    """The user's cache directory: `$XDG_CACHE_HOME` when it is an absolute path, else `~/.cache`."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def default_suite_dir(spec: SuiteSpec) -> Path:
    """Where a suite is built and read unless `paths.suite` says otherwise: `$CKPTSTUDY_SUITE_DIR` when set,
    else `<cache>/ckptstudy/suites/<name>-<recipe hash>` (another recipe = another directory)."""
    override = os.environ.get(SUITE_DIR_ENV, "")
    if override:
        return Path(override).expanduser().absolute()
    return cache_home() / "ckptstudy" / "suites" / f"{spec.name}-{spec.spec_hash()}"


def suite_dir(model_cfg) -> Path:
    """The directory holding a suite's step<N>/ checkpoints (parent of `model.path`; `paths.suite` by default)."""
    return Path(model_cfg.path.format(step=0)).parent


def read_manifest(directory: str | Path) -> dict | None:
    """The build manifest in `directory` (None when there is none or it cannot be read)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def build_problem(spec: SuiteSpec, directory: str | Path) -> str | None:
    """Why `directory` is not a finished build of `spec` (None when it is): no directory, no manifest, a
    manifest of another recipe, or a checkpoint of the recipe missing."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    manifest = read_manifest(directory)
    if manifest is None:
        return f"{directory} has no {MANIFEST} (not a finished build)"
    if manifest.get("spec_hash") != spec.spec_hash():
        return (
            f"{directory} holds a build of another recipe (recipe hash {manifest.get('spec_hash')}; "
            f"this config's model.suite hashes to {spec.spec_hash()})"
        )
    missing = [s for s in spec.checkpoint_steps() if not (directory / f"step{s}" / "config.json").is_file()]
    if missing:
        return f"{directory} lacks the checkpoints of steps {missing}"
    return None


def is_built(spec: SuiteSpec, directory: str | Path) -> bool:
    """True when `directory` holds a finished, complete build of exactly this spec."""
    return build_problem(spec, directory) is None


def checkpoint_problem(model_cfg, step: int) -> str | None:
    """Why a job of a suite model cannot read its checkpoint of `step` from `model.path`, naming the path and
    the fix (None when the checkpoint directory exists and no manifest says it belongs to another recipe).

    A directory of checkpoints without a manifest (a partial copy) is read as it is; the files are checked
    when they load."""
    directory = Path(model_cfg.path.format(step=step))
    suite = directory.parent
    spec = spec_from_config(model_cfg)
    manifest = read_manifest(suite)
    if manifest is not None and manifest.get("spec_hash") != spec.spec_hash():
        return (
            f"{model_cfg.name} step {step}: {build_problem(spec, suite)}; point paths.suite ({SUITE_DIR_ENV}) "
            f"or model.path at a build of this recipe, or {BUILD_HINT}"
        )
    if not directory.is_dir():
        built = "the suite is not built there" if manifest is None else "the build there lacks this step"
        return f"{model_cfg.name} step {step}: no checkpoint directory {directory} (model.path; {built}): {BUILD_HINT}"
    return None
