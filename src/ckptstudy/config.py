"""Structured-config schema: Hydra refuses unknown keys and wrong types against these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ModelConf:
    name: str = MISSING
    source: str = "hub"  # hub | local
    repo: str | None = None  # hub: repo id, e.g. EleutherAI/pythia-160m
    revision: str = "step{step}"  # hub: revision template
    path: str | None = None  # local: directory template with {step}
    checkpoints: str = "pythia"  # which steps exist: pythia | suite | list (then `steps`)
    steps: list[int] | None = None  # explicit available steps when checkpoints=list
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    suite: dict[str, Any] = field(default_factory=dict)  # SuiteSpec overrides (checkpoints=suite)


@dataclass
class RandomRepeatConf:
    n: int = 16
    length: int = 50


@dataclass
class NaturalConf:
    n: int = 64
    length: int = 32


@dataclass
class IclRepeatConf:
    n: int = 64
    length: int = 24
    copies: int = 4


@dataclass
class LongTextConf:
    n: int = 8
    length: int = 512


@dataclass
class ProbesConf:
    source: str = "stdlib"  # stdlib | minipile | files
    files_glob: str | None = "*/*.py"
    dataset: str | None = None
    split: str | None = None
    text_field: str = "text"
    max_texts: int = 3000
    seed: int = 0
    random_repeat: RandomRepeatConf = field(default_factory=RandomRepeatConf)
    natural: NaturalConf = field(default_factory=NaturalConf)
    icl_repeat: IclRepeatConf = field(default_factory=IclRepeatConf)
    long_text: LongTextConf = field(default_factory=LongTextConf)


@dataclass
class LoggerConf:
    backend: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "ckptstudy"
    entity: str | None = None
    heatmaps: bool = True


@dataclass
class ReportConf:
    summary_metrics: list[str] = field(default_factory=list)  # columns of the printed table and the plot
    onset_metrics: list[str] = field(default_factory=list)  # metrics whose onset step is reported
    onset_fraction: float = 0.5  # onset = first crossing of baseline + fraction * (extreme - baseline)


@dataclass
class LoopsConf:
    new_tokens: int = 1000
    definition: str = "suffix"  # suffix | paper
    min_period: int = 2
    max_period: int = 500
    min_copies: int = 2


@dataclass
class PathsConf:
    root: str = "outputs"


@dataclass
class Config:
    study: str = "default"
    step: Any = None  # int, or "final"; None = the model's last checkpoint
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    batch_size: int = 16
    force: bool = False
    paths: PathsConf = field(default_factory=PathsConf)
    model: ModelConf = MISSING
    probes: ProbesConf = field(default_factory=ProbesConf)
    loops: LoopsConf = field(default_factory=LoopsConf)
    metrics: dict[str, Any] = field(default_factory=dict)
    logger: LoggerConf = field(default_factory=LoggerConf)
    report: ReportConf = field(default_factory=ReportConf)


def register_configs() -> None:
    """Register the schema; conf/config.yaml lists `config_schema` first in its defaults."""
    ConfigStore.instance().store(name="config_schema", node=Config)


CHOICES = {
    "model.source": ("hub", "local"),
    "model.checkpoints": ("pythia", "suite", "list"),
    "probes.source": ("stdlib", "minipile", "files"),
    "logger.backend": ("wandb", "none"),
    "logger.mode": ("offline", "online", "disabled"),
    "dtype": ("float32", "bfloat16", "float16", "auto"),
    "loops.definition": ("suffix", "paper"),
}


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose conf/config.yaml with overrides, outside a Hydra run (CLI helpers, tests)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def check_choices(cfg) -> None:
    """Refuse a string option outside its valid set, naming the key, the value and the choices."""
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")
