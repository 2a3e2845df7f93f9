"""What a multirun visits, parsed in one place for every console script: a `key=value` override taken out of
a command line (`take_override`), the values of a Hydra sweep expression (`sweep_values`), and the checkpoint
steps `ckptstudy -m` runs for a config (`swept_steps`), the way Hydra's basic sweeper reads them."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from ckptstudy.model import checkpoints

NULLS = ("None", "null")  # `step=null` (the config's default) and what str(None) gives: the final checkpoint


def take_override(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    """The value of the `key=value` override (the last one when repeated; None when absent) and the
    other overrides, in order. `+key=` and `++key=` count as `key=`."""
    value, rest = None, []
    for override in overrides:
        name, sep, found = override.lstrip("+").partition("=")
        if sep and name == key:
            value = found
        else:
            rest.append(override)
    return value, rest


def sweep_values(value: str) -> list[str]:
    """The values a Hydra sweep expression expands to, as strings: `1,2` -> ["1", "2"],
    `range(1000,4000,1000)` -> ["1000", "2000", "3000"], `choice(a,b)`, or a single value."""
    override = OverridesParser.create().parse_override(f"key={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def swept_steps(cfg, step_value: str | None = None) -> list[int]:
    """The checkpoint steps `ckptstudy -m` visits for `cfg` (composed with `return_hydra_config=True`), sorted,
    each once: those of `step_value` (a `step=` override of the command line, which wins over the schedule as
    in Hydra's basic sweeper) when given, else the schedule's `hydra.sweeper.params.step`, else `step` (one
    job). `final`/`null` is the model's last checkpoint; a step the model does not have is refused by
    `checkpoints.resolve_step`, naming the nearest valid ones."""
    if step_value is None:
        params = cfg.hydra.sweeper.get("params") or {}
        step_value = str(params.get("step", cfg.step))
    available = checkpoints.available_steps(cfg.model)
    values = [None if v in NULLS else v for v in sweep_values(step_value)]
    return sorted({checkpoints.resolve_step(v, available, cfg.model.name) for v in values})
