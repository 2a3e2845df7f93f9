"""What a micro suite is: its recipe (`SuiteSpec`), the steps it saves, and where its checkpoints live.

No heavy imports: `checkpoints.py` asks this module which steps a suite model has without loading torch
models or tokenizers. Building a suite (corpus, tokenizer, training loop) is `ckptstudy.model.suite`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class SuiteSpec:
    """Everything that determines a micro suite; its hash names the build."""

    # the values live in conf/model/<suite>.yaml (`model.suite`); see its comments
    name: str
    seed: int
    # model
    n_layers: int
    d_model: int
    n_heads: int
    rotary_pct: float
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
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def spec_from_config(model_cfg) -> SuiteSpec:
    """The SuiteSpec of a `checkpoints: suite` model config: its `model.suite` recipe, every key given."""
    overrides = dict(model_cfg.get("suite") or {})
    overrides.setdefault("name", model_cfg.name)
    try:
        return SuiteSpec(**{k: ([list(p) for p in v] if k == "phases" else v) for k, v in overrides.items()})
    except TypeError as err:
        valid = ", ".join(SuiteSpec.__dataclass_fields__)
        raise ValueError(f"model.suite of {model_cfg.name!r}: {err}; valid keys: {valid}") from None


def suite_dir(model_cfg) -> Path:
    """The directory holding a suite's step<N>/ checkpoints (parent of `model.path`)."""
    return Path(model_cfg.path.format(step=0)).parent
