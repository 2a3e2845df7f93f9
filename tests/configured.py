"""The values a job uses, read from conf/ (functions and dataclasses have no defaults of their own: values
live in the yaml only), so tests call them the way a job does and override only what they vary."""

from __future__ import annotations

import yaml

from ckptstudy.config import CONF_DIR
from ckptstudy.measure.cycles import LoopRule
from ckptstudy.metrics import JobContext


def family_params(name: str, **overrides) -> dict:
    """conf/metrics/<name>.yaml's parameters (without `_target_`), updated with `overrides`."""
    values = yaml.safe_load((CONF_DIR / "metrics" / f"{name}.yaml").read_text())
    return {**{k: v for k, v in values.items() if k != "_target_"}, **overrides}


def top_level() -> dict:
    return yaml.safe_load((CONF_DIR / "config.yaml").read_text())


def loop_rule(**overrides) -> LoopRule:
    """conf/config.yaml's loop rule (`loops`), with `overrides` (e.g. definition="paper")."""
    loops = {**top_level()["loops"], **overrides}
    return LoopRule(loops["definition"], loops["min_period"], loops["max_period"], loops["min_copies"])


def job_context(model, tokenizer, probes, **overrides) -> JobContext:
    """A JobContext with conf/config.yaml's batch size, seed and loops, updated with `overrides`."""
    cfg = top_level()
    fields = {
        "batch_size": cfg["batch_size"],
        "seed": cfg["seed"],
        "loops": loop_rule(),
        "natural_new_tokens": cfg["loops"]["new_tokens"],
        **overrides,
    }
    return JobContext(model=model, tokenizer=tokenizer, probes=probes, **fields)
