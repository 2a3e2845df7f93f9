"""The config: its structured schema, and `validate`, which refuses bad values right after composition.

Hydra refuses unknown keys, wrong types and unknown choices against the dataclasses below when the config is
composed. `validate(cfg)` then checks what a schema cannot say: the loop rule, the probe sizes, every metric
family's parameters against the ranges declared in its `measure` signature (`ckptstudy.params`) and the claims
(`conf/claims/`, `stats.claim_spec`), each refusal naming the key, its value and what is valid. It runs in every
entry point before anything is resolved or loaded: `compose_config` (CLI helpers, tests), each Hydra job
(`job.run_job`) and the start of a multirun (`callbacks.TrajectoryCallback`: a bad value refuses the whole sweep
before any job launches).

Values live in the yaml files under conf/ (one source each); the dataclasses hold types, choices (Enums,
whose error lists the valid values) and, for a model, Pythia's conventions as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from ckptstudy.measure.budget import parse_budget
from ckptstudy.measure.cost import Shape
from ckptstudy.measure.cycles import check_loop_parameters
from ckptstudy.model import arch, hubcache
from ckptstudy.model.checkpoints import available_steps, check_model_config, run_name
from ckptstudy.model.suite_spec import default_suite_dir, spec_from_config
from ckptstudy.params import check_family, min_effects
from ckptstudy.probes import check_probe_config
from ckptstudy.stats.claim_spec import Claim, ClaimConfigError, defaults_from, parse_claims

CONF_DIR = Path(__file__).resolve().parent / "conf"  # ships inside the package; the repo's conf/ links here
MIN_NEW_TOKENS = 4  # loops.new_tokens: the shortest generation that can hold 2 copies of a period-2 cycle


class Source(str, Enum):
    hub = "hub"  # a Hugging Face hub repo (HF cache, offline-capable)
    local = "local"  # a directory per step


class Checkpoints(str, Enum):
    pythia = "pythia"  # Pythia's 154 branches: step0, powers of two to 512, every 1000 to 143000
    suite = "suite"  # the steps of the embedded suite recipe (`model.suite`)
    list = "list"  # model.steps, model.step_ranges and the steps of model.branch_tokens, together


class Arch(str, Enum):
    gpt_neox = "gpt_neox"  # GPT-NeoX (Pythia): parallel residual, LayerNorm, partial rotary
    llama = "llama"  # Llama-style (Llama, OLMo, OLMo 2): sequential residual, RMSNorm/LayerNorm, SwiGLU, rotary
    gpt2 = "gpt2"  # GPT-2 (Stanford CRFM runs): Conv1D projections, learned positions, tied unembedding


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
    repo: str | None = None  # hub: repo id, e.g. EleutherAI/pythia-160m (the reference run, seed 0 or none)
    seed_repo: str | None = None  # hub: repo template with {seed} of the other training runs
    repo_by_seed: dict[int, str] | None = None  # hub: the repo of each seed, where names follow no template
    revision: str = "step{step}"  # hub: branch name template ({step}; {tokens} from branch_tokens; {seed})
    path: str | None = None  # local: directory template with {step}
    checkpoints: Checkpoints = Checkpoints.pythia
    steps: list[int] | None = None  # checkpoints=list: explicit steps
    step_ranges: list[list[int]] | None = None  # checkpoints=list: [first, last, every] ranges (last included)
    branch_tokens: list[list[int]] | None = None  # checkpoints=list: [step, tokens] pairs for {tokens} in revision
    seed: int | None = None  # the training run (seed) of the suite; None = the suite has one run
    seeds: list[int] | None = None  # the seeds the suite publishes (None: any, e.g. a micro suite builds each)
    arch: Arch = Arch.gpt_neox  # the architecture family (ckptstudy.model.arch); a checkpoint must match it
    n_layers: int | None = None  # the shape the yaml promises (plan, probe checks before loading)
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None  # MLP width; None = the family's default (4 d_model for GELU)
    vocab_size: int = 50304  # Pythia's padded vocabulary
    context: int = 2048  # the longest input (max_position_embeddings)
    tied_embeddings: bool = False  # the unembedding shares the input embedding's weights
    tokens_per_step: int | None = 2_097_152  # training tokens per optimizer step (Pythia: 1024 x 2048)
    file_bytes_per_param: int = 2  # bytes per parameter of the hub checkpoint files (Pythia: float16), for the plan
    bos_from_eos: bool = False  # a tokenizer without a BOS token gets its EOS token as BOS (else it is refused)
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
    level: float = MISSING  # confidence level of the intervals (method per statistic kind: intervals.METHODS)
    seed: int = MISSING  # seeds the resamples (the same draws at every checkpoint)
    min_prompts: int = MISSING  # fewer contributing prompts give no interval (every resample repeats them)


@dataclass
class VerdictsConf:
    """How a claim's test reads the trajectories when the claim does not say (`stats.claim_spec.Defaults`)."""

    last: Any = MISSING  # level, comparison: the last k ok checkpoints, or "all"
    combine: str = MISSING  # level, comparison: every (each checkpoint's interval) | mean (paired interval of the mean)
    window: float = MISSING  # trend: early / late = the first / last this share of the swept steps in log(1 + step)
    share: float = MISSING  # onset order: share of paired replicates the order must hold in
    min_checkpoints: int = MISSING  # trend, onset order: fewer ok checkpoints give "too few checkpoints"


@dataclass
class ReportConf:
    summary_metrics: list[str] = MISSING  # columns of the printed table and the plot
    onset_metrics: list[str] = MISSING  # metrics whose onset step is reported
    onset_fraction: float = MISSING  # onset = first crossing of baseline + fraction * (extreme - baseline)
    onset_persist: int = MISSING  # the crossing must hold for this many consecutive checkpoints (1 = first crossing)
    bootstrap: BootstrapConf = field(default_factory=BootstrapConf)
    panels_per_family: int = MISSING  # trajectory panels per metric family in report.html
    verdicts: VerdictsConf = field(default_factory=VerdictsConf)


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
    batch_size: int | None = MISSING  # at most this many rows per call; None = as many as memory_budget allows
    memory_budget: Any = MISSING  # "auto" or GB (float)
    force: bool = MISSING
    paths: PathsConf = field(default_factory=PathsConf)
    checkpoints: CheckpointsConf = field(default_factory=CheckpointsConf)
    model: ModelConf = MISSING
    probes: ProbesConf = field(default_factory=ProbesConf)
    loops: LoopsConf = field(default_factory=LoopsConf)
    metrics: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)  # conf/claims/: one file per paper (stats.claim_spec)
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


def run_directory(*, _root_: DictConfig) -> str:
    """Resolver `${ckptstudy_run:}`: the run of the configured model (its name, with `@seed<k>` for a training seed
    other than 0), e.g. the sweep subdirectory of a job."""
    return run_name(_root_.model)


def register_configs() -> None:
    """Register the schema (conf/config.yaml lists `config_schema` first) and ckptstudy's resolvers."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("ckptstudy_steps"):
        OmegaConf.register_new_resolver("ckptstudy_steps", all_steps)
    if not OmegaConf.has_resolver("ckptstudy_suite_dir"):
        OmegaConf.register_new_resolver("ckptstudy_suite_dir", suite_directory)
    if not OmegaConf.has_resolver("ckptstudy_run"):
        OmegaConf.register_new_resolver("ckptstudy_run", run_directory)


class ConfigValueError(ValueError):
    """A composed config holds a value that is not valid (the message names the key and what is valid)."""


def model_shape(model_cfg) -> Shape | None:
    """The model's shape from its yaml: a suite's recipe, else n_layers / d_model / n_heads with the yaml's
    vocabulary, context, MLP width and tying (Pythia's by default), the MLP's matrices from its architecture's
    adapter; None when the yaml does not state the dimensions."""
    family = arch.for_family(getattr(model_cfg.arch, "value", model_cfg.arch))
    matrices = family.mlp_matrices
    if model_cfg.checkpoints == "suite":
        suite = model_cfg.suite
        return Shape(
            suite.n_layers,
            suite.d_model,
            suite.n_heads,
            suite.vocab_size,
            suite.max_position_embeddings,
            d_ff=suite.get("d_ff"),
            mlp_matrices=matrices,
            tied_embeddings=bool(model_cfg.tied_embeddings),
            learned_positions=family.learned_positions,
        )
    if any(model_cfg.get(k) is None for k in ("n_layers", "d_model", "n_heads")):
        return None
    return Shape(
        model_cfg.n_layers,
        model_cfg.d_model,
        model_cfg.n_heads,
        model_cfg.vocab_size,
        model_cfg.context,
        d_ff=model_cfg.d_ff,
        mlp_matrices=matrices,
        tied_embeddings=bool(model_cfg.tied_embeddings),
        learned_positions=family.learned_positions,
    )


def validate(cfg: DictConfig) -> None:
    """Refuse a bad value before anything is resolved or loaded, naming the key, the value and what is valid:
    the loop rule (`loops.*`), the probe sizes (`probes.*`), `batch_size`, `memory_budget`, the `checkpoints`
    block, every family's parameters (`metrics.*`: unknown, missing, type, range, choice, the family's `check`)
    and every claim (`claims.*`, `report.verdicts`: `stats.claim_spec`)."""
    loops = cfg.loops
    try:
        definition = getattr(loops.definition, "value", loops.definition)
        check_loop_parameters(definition, loops.min_period, loops.max_period, loops.min_copies)
    except ValueError as err:
        raise ConfigValueError(f"loops: {err}") from None
    if loops.new_tokens is None or loops.new_tokens < MIN_NEW_TOKENS:
        raise ConfigValueError(
            f"loops.new_tokens={loops.new_tokens} is not valid: it must be >= {MIN_NEW_TOKENS} "
            "(tokens generated per natural prompt)"
        )
    try:
        if cfg.model.checkpoints == "suite":  # the recipe first: the model's path resolves through it
            spec_from_config(cfg.model)
        check_model_config(cfg.model)
    except ValueError as err:
        raise ConfigValueError(str(err)) from None
    check_probe_config(cfg.probes)
    if cfg.batch_size is not None and (isinstance(cfg.batch_size, bool) or cfg.batch_size < 1):
        raise ConfigValueError(
            f"batch_size={cfg.batch_size} is not valid; valid: an integer >= 1 (the most rows per call), or null "
            "(as many as memory_budget allows)"
        )
    try:
        parse_budget(cfg.memory_budget)
        hubcache.check_config(cfg.checkpoints)
    except ValueError as err:
        raise ConfigValueError(str(err)) from None
    shape = model_shape(cfg.model)
    if shape is not None:
        check_room_to_generate(cfg.probes, shape.context)
    for name, family_cfg in cfg.metrics.items():
        check_family(name, OmegaConf.to_container(family_cfg, resolve=True), shape)
    configured_claims(cfg)


def configured_claims(cfg: DictConfig) -> list[Claim]:
    """The claims of `cfg.claims` (conf/claims/), read with the defaults of `report.verdicts` and the MIN_EFFECT
    of the configured metric families; a claim that is not valid is refused naming its key."""
    try:
        defaults = defaults_from(cfg.report.verdicts)
        claims = OmegaConf.to_container(cfg.claims, resolve=True) if cfg.get("claims") else {}
        return parse_claims(claims, defaults, min_effects(cfg.metrics))
    except ClaimConfigError as err:
        raise ConfigValueError(str(err)) from None


def validate_sweep(cfg: DictConfig) -> None:
    """`validate` the config of a multirun, and again with each value a sweep override gives a config key
    (`metrics.icl_heads.top_k=1,3,0` is refused for its 0 before any job launches). Needs `cfg.hydra`."""
    validate(cfg)
    overrides = OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task))
    for override in overrides:
        key = override.key_or_group
        if not override.is_sweep_override() or key == "step" or OmegaConf.select(cfg, key) is None:
            continue
        for value in override.sweep_iterator():
            swept = cfg.copy()
            with open_dict(swept):
                OmegaConf.update(swept, key, value, merge=False)
            validate(swept)


def check_room_to_generate(probes, context: int) -> None:
    """Refuse prompts that leave no room in the model's `context` (from its yaml) to generate after them: the
    natural prompts need MIN_NEW_TOKENS, icl_repeat (passage x copies) one token. A job refuses the same against
    the loaded model (`JobContext.room_after`); this refuses it before any weights load."""
    needs = {
        "natural": (probes.natural.length, MIN_NEW_TOKENS),
        "icl_repeat": (probes.icl_repeat.length * probes.icl_repeat.copies, 1),
    }
    for probe, (tokens, minimum) in needs.items():
        if context - tokens < minimum:
            raise ConfigValueError(
                f"probes.{probe} prompts ({tokens} tokens) leave {context - tokens} of the model's {context}-token "
                f"context to generate in (need {minimum}); shorten probes.{probe}"
            )


def compose_config(
    overrides: list[str] | None = None, return_hydra_config: bool = False, check: bool = True
) -> DictConfig:
    """Compose conf/config.yaml with overrides, outside a Hydra run (CLI helpers, tests), and `validate` it
    (`check=False` for a tool that measures nothing, e.g. `ckptstudy-suite`, which only reads the recipe)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
    if check:
        validate(cfg)
    return cfg
