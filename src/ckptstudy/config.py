"""Structured-config schema: Hydra refuses unknown keys, wrong types and unknown choices against these
dataclasses when the config is composed, before any job starts.

Values live in the yaml files under conf/ (one source each); the dataclasses hold types, choices (Enums,
whose error lists the valid values) and, for a model, Pythia's conventions as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ckptstudy.model.checkpoints import available_steps
from ckptstudy.model.suite_spec import default_suite_dir, spec_from_config
from ckptstudy.schemas import register_family_schemas

CONF_DIR = Path(__file__).resolve().parent / "conf"  # ships inside the package; the repo's conf/ links here


class Source(str, Enum):
    hub = "hub"  # a Hugging Face hub repo (HF cache, offline-capable)
    local = "local"  # a directory per step


class Checkpoints(str, Enum):
    pythia = "pythia"  # Pythia's 154 branches: step0, powers of two to 512, every 1000 to 143000
    suite = "suite"  # the steps of the embedded suite recipe (`model.suite`)
    list = "list"  # exactly `model.steps`


class ProbeSource(str, Enum):
    stdlib = "stdlib"
    minipile = "minipile"
    files = "files"


class Backend(str, Enum):
    wandb = "wandb"
    none = "none"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


class LoopDefinition(str, Enum):
    suffix = "suffix"
    paper = "paper"


@dataclass
class ModelConf:
    """A model of a suite. Defaults are Pythia's hub conventions; a model yaml writes what differs."""

    name: str = MISSING
    source: Source = Source.hub
    repo: str | None = None  # hub: repo id, e.g. EleutherAI/pythia-160m
    revision: str = "step{step}"  # hub: revision template
    path: str | None = None  # local: directory template with {step}
    checkpoints: Checkpoints = Checkpoints.pythia
    steps: list[int] | None = None  # explicit available steps when checkpoints=list
    n_layers: int | None = None  # the architecture the yaml promises; a loaded checkpoint must match it
    d_model: int | None = None
    n_heads: int | None = None
    tokens_per_step: int | None = 2_097_152  # training tokens per optimizer step (Pythia: 1024 x 2048)
    suite: dict[str, Any] | None = None  # the suite recipe (checkpoints=suite), checked against SuiteSpec


@dataclass
class RandomRepeatConf:
    n: int = MISSING
    length: int = MISSING


@dataclass
class NaturalConf:
    n: int = MISSING
    length: int = MISSING


@dataclass
class IclRepeatConf:
    n: int = MISSING
    length: int = MISSING
    copies: int = MISSING


@dataclass
class LongTextConf:
    n: int = MISSING
    length: int = MISSING


@dataclass
class ProbesConf:
    """Probe sources and sizes; the values live in conf/probes/*.yaml."""

    source: ProbeSource = MISSING
    files_glob: str | None = MISSING
    dataset: str | None = MISSING
    split: str | None = MISSING
    text_field: str = MISSING
    max_texts: int = MISSING
    seed: int = MISSING
    random_repeat: RandomRepeatConf = field(default_factory=RandomRepeatConf)
    natural: NaturalConf = field(default_factory=NaturalConf)
    icl_repeat: IclRepeatConf = field(default_factory=IclRepeatConf)
    long_text: LongTextConf = field(default_factory=LongTextConf)


@dataclass
class LoggerConf:
    backend: Backend = MISSING
    mode: WandbMode = MISSING
    project: str = MISSING
    entity: str | None = None
    heatmaps: bool = MISSING
    strict: bool = MISSING


@dataclass
class BootstrapConf:
    n: int = MISSING  # resamples of the prompts per checkpoint
    level: float = MISSING  # confidence level of the percentile intervals
    seed: int = MISSING  # seeds the resamples (the same draws at every checkpoint)
    min_prompts: int = MISSING  # fewer contributing prompts give no interval (every resample repeats them)


@dataclass
class ReportConf:
    summary_metrics: list[str] = MISSING  # columns of the printed table and the plot
    onset_metrics: list[str] = MISSING  # metrics whose onset step is reported
    onset_fraction: float = MISSING  # onset = first crossing of baseline + fraction * (extreme - baseline)
    onset_persist: int = MISSING  # the crossing must hold for this many consecutive checkpoints (1 = first crossing)
    bootstrap: BootstrapConf = field(default_factory=BootstrapConf)
    panels_per_family: int = MISSING  # trajectory panels per metric family in report.html


@dataclass
class LoopsConf:
    new_tokens: int = MISSING
    definition: LoopDefinition = MISSING
    min_period: int = MISSING
    max_period: int = MISSING
    min_copies: int = MISSING


@dataclass
class CheckpointsConf:
    """Hub checkpoints on disk (model.source=hub only; local checkpoint directories are never touched)."""

    evict: bool = MISSING  # delete what this sweep downloaded for a checkpoint once its record is written
    prefetch_ahead: int = MISSING  # revisions of the sweep downloaded in the background ahead of the measured one


@dataclass
class PathsConf:
    root: str = MISSING  # results: records, tables, report, W&B runs, probe cache
    suite: str | None = None  # the micro suite's directory (a suite model's model.path lives under it)


@dataclass
class Config:
    """The whole job config; values live in conf/config.yaml and the group yamls."""

    study: str = MISSING
    step: Any = None  # int, or "final"/"first"; None = the model's last checkpoint
    seed: int = MISSING
    device: str = MISSING  # auto | cpu | cuda | cuda:N | mps
    dtype: DType = MISSING
    batch_size: int = MISSING
    force: bool = MISSING
    paths: PathsConf = field(default_factory=PathsConf)
    checkpoints: CheckpointsConf = field(default_factory=CheckpointsConf)
    model: ModelConf = MISSING
    probes: ProbesConf = field(default_factory=ProbesConf)
    loops: LoopsConf = field(default_factory=LoopsConf)
    metrics: dict[str, Any] = field(default_factory=dict)
    logger: LoggerConf = field(default_factory=LoggerConf)
    report: ReportConf = field(default_factory=ReportConf)


def all_steps(*, _root_: DictConfig) -> str:
    """Resolver `${ckptstudy_steps:}`: every checkpoint step of the configured model, comma-separated
    (the sweep list of schedule=all)."""
    return ",".join(map(str, available_steps(_root_.model)))


def suite_directory(*, _root_: DictConfig) -> str | None:
    """Resolver `${ckptstudy_suite_dir:}` (the default of `paths.suite`): where the configured suite model's
    suite is built and read, `$CKPTSTUDY_SUITE_DIR` or `<user cache>/ckptstudy/suites/<name>-<recipe hash>`;
    None for a model that is not a suite."""
    model = _root_.model
    if model.checkpoints != "suite":
        return None
    return str(default_suite_dir(spec_from_config(model)))


def register_configs() -> None:
    """Register the schema (conf/config.yaml lists `config_schema` first) and ckptstudy's resolvers."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    register_family_schemas(CONF_DIR / "metrics")
    if not OmegaConf.has_resolver("ckptstudy_steps"):
        OmegaConf.register_new_resolver("ckptstudy_steps", all_steps)
    if not OmegaConf.has_resolver("ckptstudy_suite_dir"):
        OmegaConf.register_new_resolver("ckptstudy_suite_dir", suite_directory)


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose conf/config.yaml with overrides, outside a Hydra run (CLI helpers, tests)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
