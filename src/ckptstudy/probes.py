"""Probe batches: the token inputs every metric family reads, built once per tokenizer and config.

- `random_repeat`: BOS + `length` random token ids, repeated twice  -> [n, 1 + 2*length]
- `natural`:      ordinary texts truncated to `length` tokens       -> [n, length]
- `icl_repeat`:   a non-looping passage of `length` tokens x copies -> [n, length*copies]
- `long_text`:    natural text of `length` tokens                  -> [n, length]
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ckptstudy.corpus import CorpusError, load_source_texts
from ckptstudy.cycles import trailing_cycle
from ckptstudy.results import atomic_write_bytes

log = logging.getLogger(__name__)


class ProbeError(ValueError):
    """A probe cannot be built from the configured source (empty, too short)."""


def random_repeat_ids(n: int, length: int, low: int, high: int, seed: int, bos_id: int) -> torch.Tensor:
    """BOS followed by `length` uniform random ids in [low, high), repeated twice: [n, 1 + 2*length]."""
    if length < 2 or n < 1:
        raise ProbeError(f"probes.random_repeat needs n >= 1 and length >= 2, got n={n}, length={length}")
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (n, length), generator=gen)
    bos = torch.full((n, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1)


def split_passages(texts: list[str], min_chars: int = 40) -> list[str]:
    """Paragraphs (blank-line separated) of at least `min_chars` characters, in order."""
    out = []
    for text in texts:
        for block in text.split("\n\n"):
            block = block.strip("\n")
            if len(block.strip()) >= min_chars:
                out.append(block)
    return out


def token_passages(passages: list[str], tokenizer, length: int, seed: int) -> tuple[list[list[int]], int]:
    """Token ids of passages that have at least `length` tokens, shuffled; and the count too short."""
    order = torch.randperm(len(passages), generator=torch.Generator().manual_seed(seed)).tolist()
    kept, short = [], 0
    for i in order:
        ids = tokenizer(passages[i], add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            kept.append(ids)
        else:
            short += 1
    return kept, short


def natural_prompt_ids(tokenized: list[list[int]], n: int, length: int) -> torch.Tensor:
    """The first `length` tokens of up to `n` passages: [n', length]."""
    rows = [ids[:length] for ids in tokenized[:n]]
    if not rows:
        raise ProbeError(f"probes.natural: no passage has {length} tokens; use a longer source or smaller length")
    return torch.tensor(rows, dtype=torch.long)


def loops_by_itself(passage: list[int]) -> bool:
    """True when the passage already repeats: it ends in a cycle, or a bigram occurs twice in it
    (a repeated bigram makes the copy ambiguous: after it, two different tokens followed)."""
    bigrams = list(itertools.pairwise(passage))
    return trailing_cycle(passage, min_period=1, min_copies=2) is not None or len(set(bigrams)) < len(bigrams)


def icl_repeat_ids(tokenized: list[list[int]], n: int, length: int, copies: int) -> torch.Tensor:
    """Passages of `length` tokens that do not loop by themselves, each repeated `copies` times."""
    if copies < 2:
        raise ProbeError(f"probes.icl_repeat.copies must be >= 2, got {copies}")
    rows = []
    for ids in tokenized:
        passage = ids[:length]
        if not loops_by_itself(passage):
            rows.append(passage * copies)
        if len(rows) == n:
            break
    if not rows:
        raise ProbeError(f"probes.icl_repeat: no non-looping passage of {length} tokens in the probe source")
    return torch.tensor(rows, dtype=torch.long)


def long_text_ids(texts: list[str], tokenizer, n: int, length: int) -> torch.Tensor:
    """`n` windows of `length` tokens of running text (documents joined with EOS): [n', length]."""
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= n * length:
            break
    rows = [stream[i * length : (i + 1) * length] for i in range(min(n, len(stream) // length))]
    if not rows:
        raise ProbeError(f"probes.long_text: the probe source has fewer than {length} tokens")
    return torch.tensor(rows, dtype=torch.long)


def load_texts(probes_cfg) -> list[str]:
    """Raw texts of the configured probe source (documents, not yet split)."""
    c = probes_cfg
    try:
        texts = load_source_texts(c.source, c.files_glob, c.dataset, c.split, c.text_field, c.max_texts)
    except CorpusError as err:
        raise ProbeError(f"probes.source={c.source!r}: {err}") from err
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ProbeError(f"probe source {c.source!r} gave no non-empty text")
    return texts


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Probes:
    """The probe batches for one tokenizer (token ids on CPU) and what was skipped building them."""

    random_repeat: torch.Tensor
    natural: torch.Tensor
    icl_repeat: torch.Tensor
    long_text: torch.Tensor
    repeat_length: int
    icl_length: int
    skipped_short: int = 0
    key: str = ""
    extra: dict = field(default_factory=dict)


def build_probes(probes_cfg, tokenizer) -> Probes:
    """All probe batches for this tokenizer, from the configured source."""
    texts = load_texts(probes_cfg)
    passages = split_passages(texts) if probes_cfg.source == "stdlib" else texts
    c = probes_cfg
    need = max(c.natural.length, c.icl_repeat.length)
    tokenized, short = token_passages(passages, tokenizer, need, c.seed)
    special = set(tokenizer.all_special_ids)
    low = max(special) + 1 if special else 0
    return Probes(
        random_repeat=random_repeat_ids(
            c.random_repeat.n,
            c.random_repeat.length,
            low,
            len(tokenizer),
            c.seed,
            tokenizer.bos_token_id or 0,
        ),
        natural=natural_prompt_ids(tokenized, c.natural.n, c.natural.length),
        icl_repeat=icl_repeat_ids(tokenized, c.icl_repeat.n, c.icl_repeat.length, c.icl_repeat.copies),
        long_text=long_text_ids(texts, tokenizer, c.long_text.n, c.long_text.length),
        repeat_length=c.random_repeat.length,
        icl_length=c.icl_repeat.length,
        skipped_short=short,
    )


def probes_key(probes_cfg, tokenizer) -> str:
    from omegaconf import OmegaConf

    blob = json.dumps(OmegaConf.to_container(probes_cfg, resolve=True), sort_keys=True)
    return hashlib.sha256((blob + tokenizer_hash(tokenizer)).encode()).hexdigest()[:16]


def cached_probes(probes_cfg, tokenizer, cache_dir: str | Path) -> Probes:
    """Build probes once per (tokenizer, probe config) and reuse them from `cache_dir`."""
    key = probes_key(probes_cfg, tokenizer)
    path = Path(cache_dir) / f"probes-{key}.pt"
    if path.exists():
        try:
            return Probes(**torch.load(path, weights_only=True))
        except Exception as err:
            log.warning("probe cache %s unreadable (%s); rebuilding", path, err)
    probes = build_probes(probes_cfg, tokenizer)
    probes.key = key
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(probes.__dict__, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return probes
