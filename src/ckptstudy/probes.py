"""Probe batches: the token inputs every metric family reads, built once per tokenizer and config.

- `random_repeat`: BOS + `length` distinct random token ids, repeated twice -> [n, 1 + 2*length]
- `natural`:      ordinary texts truncated to `length` tokens              -> [n, length]
- `icl_repeat`:   a non-looping passage of `length` tokens x copies        -> [n, length*copies]
- `long_text`:    the first `length` tokens of one document each           -> [n, length] (may be [0, length])

Validity rules (PROBES_VERSION 2):
- within one `random_repeat` copy no token repeats, so every token of the second copy has exactly one
  previous occurrence (the induction target is never ambiguous);
- a `long_text` window never crosses a document boundary: each row is the start of one document that
  has at least `length` tokens. If no document is that long, `long_text` has 0 rows and
  `Probes.notes["long_text"]` says why; families must then report NaN with that reason, not a number.
- bad configuration (n or length < 1, icl_repeat.copies < 2, random_repeat.length above the number of
  usable token ids) and a source without text are refused before any text is tokenized.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ckptstudy.measure.cycles import trailing_cycle
from ckptstudy.model.corpus import CorpusError, load_source_texts
from ckptstudy.results import atomic_write_bytes

log = logging.getLogger(__name__)

# Version of the probe construction. Bump it whenever the same config and tokenizer would give different
# probe tokens: it is part of the probe cache key and stored with the probes (and in records), so probes
# and measurements made by older code are never reused silently.
# 1: first version. 2: random_repeat copies without repeated tokens; long_text windows inside one document.
PROBES_VERSION = 2

PROBE_NAMES = ("random_repeat", "natural", "icl_repeat", "long_text")
MIN_LENGTH = {"random_repeat": 2, "natural": 1, "icl_repeat": 1, "long_text": 1}


class ProbeError(ValueError):
    """A probe cannot be built: bad probe configuration, or a source that cannot give it (empty, too short)."""


def usable_ids(tokenizer) -> torch.Tensor:
    """Token ids a random probe may use: every id of the tokenizer except its special tokens, sorted."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


def check_probe_config(probes_cfg, n_usable_ids: int | None = None) -> None:
    """Refuse bad probe sizes before any work, naming the key, its value and the valid range
    (`n_usable_ids`: the tokenizer's non-special ids, which bound `random_repeat.length`)."""
    c = probes_cfg
    for probe in PROBE_NAMES:
        n, length = getattr(c, probe).n, getattr(c, probe).length
        if n is None or n < 1:
            raise ProbeError(f"probes.{probe}.n={n} is not valid: it must be >= 1")
        if length is None or length < MIN_LENGTH[probe]:
            raise ProbeError(f"probes.{probe}.length={length} is not valid: it must be >= {MIN_LENGTH[probe]}")
    copies = c.icl_repeat.copies
    if copies is None or copies < 2:
        raise ProbeError(f"probes.icl_repeat.copies={copies} is not valid: it must be >= 2 (a passage and its copy)")
    if c.max_texts is not None and c.max_texts < 1:
        raise ProbeError(f"probes.max_texts={c.max_texts} is not valid: it must be >= 1 (or null for all)")
    length = c.random_repeat.length
    if n_usable_ids is not None and length > n_usable_ids:
        raise ProbeError(
            f"probes.random_repeat.length={length} is not valid: a copy's tokens are distinct, so it must be "
            f"<= {n_usable_ids}, the tokenizer's number of non-special token ids"
        )


def random_repeat_ids(n: int, length: int, ids: torch.Tensor, seed: int, bos_id: int) -> torch.Tensor:
    """BOS followed by `length` distinct ids drawn (seeded, uniformly, without replacement) from `ids`,
    repeated twice: [n, 1 + 2*length]. Distinct tokens make each token's previous occurrence unique."""
    if n < 1 or length < MIN_LENGTH["random_repeat"]:
        raise ProbeError(f"probes.random_repeat needs n >= 1 and length >= 2, got n={n}, length={length}")
    if length > len(ids):
        raise ProbeError(
            f"probes.random_repeat.length={length} is not valid: a copy's tokens are distinct, so it must be "
            f"<= {len(ids)}, the number of usable token ids"
        )
    gen = torch.Generator().manual_seed(seed)
    half = torch.stack([ids[torch.randperm(len(ids), generator=gen)[:length]] for _ in range(n)])
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


class TokenizedPassages:
    """Token ids of the passages with at least `length` tokens, in a seeded shuffled order, tokenized
    lazily in batches: the probes need a few hundred passages, a corpus has tens of thousands.

    Iterating always starts from the first kept passage; `short` counts the examined passages that were
    too short.
    """

    def __init__(self, passages: list[str], tokenizer, length: int, seed: int, chunk: int = 512):
        self.order = torch.randperm(len(passages), generator=torch.Generator().manual_seed(seed)).tolist()
        self.passages, self.tokenizer, self.length, self.chunk = passages, tokenizer, length, chunk
        self.kept: list[list[int]] = []
        self.examined = 0
        self.short = 0

    def _tokenize_more(self) -> bool:
        batch = [self.passages[i] for i in self.order[self.examined : self.examined + self.chunk]]
        if not batch:
            return False
        self.examined += len(batch)
        for ids in self.tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if len(ids) >= self.length:
                self.kept.append(ids)
            else:
                self.short += 1
        return True

    def __iter__(self):
        index = 0
        while True:
            while index >= len(self.kept):
                if not self._tokenize_more():
                    return
            yield self.kept[index]
            index += 1


def natural_prompt_ids(tokenized: Iterable[list[int]], n: int, length: int) -> torch.Tensor:
    """The first `length` tokens of up to `n` passages: [n', length]."""
    rows = [ids[:length] for ids in itertools.islice(tokenized, n)]
    if not rows:
        raise ProbeError(f"probes.natural: no passage has {length} tokens; use a longer source or smaller length")
    return torch.tensor(rows, dtype=torch.long)


def loops_by_itself(passage: list[int]) -> bool:
    """True when the passage already repeats: it ends in a cycle, or a bigram occurs twice in it
    (a repeated bigram makes the copy ambiguous: after it, two different tokens followed)."""
    bigrams = list(itertools.pairwise(passage))
    return trailing_cycle(passage, min_period=1, min_copies=2) is not None or len(set(bigrams)) < len(bigrams)


def icl_repeat_ids(tokenized: Iterable[list[int]], n: int, length: int, copies: int) -> torch.Tensor:
    """Passages of `length` tokens that do not loop by themselves, each repeated `copies` times."""
    if copies < 2:
        raise ProbeError(f"probes.icl_repeat.copies={copies} is not valid: it must be >= 2 (a passage and its copy)")
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


def long_text_ids(texts: list[str], tokenizer, n: int, length: int, seed: int) -> tuple[torch.Tensor, str]:
    """The first `length` tokens of up to `n` documents that have at least `length` tokens (documents
    taken in a seeded order, one window each, so no window crosses a document boundary): [n', length],
    and a note saying why n' < n ("" when n' = n). n' may be 0: then the tensor is [0, length]."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    rows, longest = [], 0
    for i in order:
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        longest = max(longest, len(ids))
        if len(ids) >= length:
            rows.append(ids[:length])
            if len(rows) == n:
                break
    if len(rows) == n:
        return torch.tensor(rows, dtype=torch.long), ""
    if not rows:
        note = (
            f"no single document has {length} tokens (probes.long_text.length; the longest of the "
            f"{len(texts)} documents has {longest}): long_text is empty"
        )
        return torch.empty((0, length), dtype=torch.long), note
    note = f"only {len(rows)} of the {len(texts)} documents have {length} tokens: {len(rows)} of {n} windows"
    return torch.tensor(rows, dtype=torch.long), note


def load_texts(probes_cfg) -> list[str]:
    """Raw texts of the configured probe source (documents, not yet split), as read."""
    c = probes_cfg
    try:
        return load_source_texts(c.source, c.files_glob, c.dataset, c.split, c.text_field, c.max_texts)
    except CorpusError as err:
        raise ProbeError(f"probes.source={c.source!r}: {err}") from err


def non_blank(texts: list[str], source: str) -> list[str]:
    """The texts that are not empty or whitespace-only; refused when none is left."""
    kept = [t for t in texts if t and t.strip()]
    if not kept:
        raise ProbeError(
            f"probe source {source!r} gave {len(texts)} texts, all empty or whitespace-only "
            "(need at least 1 text with non-blank content)"
        )
    return kept


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Probes:
    """The probe batches for one tokenizer (token ids on CPU) and what was skipped building them.

    `version`: the PROBES_VERSION that built them (store it with records). `notes`: {probe: why it has
    fewer rows than configured}; a probe with 0 rows (only `long_text` can have none) cannot be measured,
    and `notes[probe]` is the reason to report with the NaN.
    """

    random_repeat: torch.Tensor
    natural: torch.Tensor
    icl_repeat: torch.Tensor
    long_text: torch.Tensor
    repeat_length: int
    icl_length: int
    skipped_short: int = 0
    key: str = ""
    version: int = PROBES_VERSION
    notes: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def empty_reason(self, probe: str) -> str | None:
        """Why `probe` has no rows, or None when it has some."""
        if getattr(self, probe).shape[0] > 0:
            return None
        return self.notes.get(probe, f"probes.{probe} is empty")


def probes_from_texts(texts: list[str], tokenizer, probes_cfg) -> Probes:
    """All probe batches for this tokenizer from the source's documents `texts`."""
    c = probes_cfg
    ids = usable_ids(tokenizer)
    check_probe_config(c, len(ids))
    texts = non_blank(texts, c.source)
    bos = tokenizer.bos_token_id or 0
    random_repeat = random_repeat_ids(c.random_repeat.n, c.random_repeat.length, ids, c.seed, bos)
    passages = split_passages(texts) if c.source == "stdlib" else texts
    need = max(c.natural.length, c.icl_repeat.length)
    tokenized = TokenizedPassages(passages, tokenizer, need, c.seed)
    natural = natural_prompt_ids(tokenized, c.natural.n, c.natural.length)
    icl_repeat = icl_repeat_ids(tokenized, c.icl_repeat.n, c.icl_repeat.length, c.icl_repeat.copies)
    long_text, long_note = long_text_ids(texts, tokenizer, c.long_text.n, c.long_text.length, c.seed)
    notes = {"long_text": long_note} if long_note else {}
    for name, rows, n in (("natural", natural, c.natural.n), ("icl_repeat", icl_repeat, c.icl_repeat.n)):
        if rows.shape[0] < n:
            notes[name] = f"only {rows.shape[0]} of {n} passages qualify (enough tokens, and for icl_repeat no loop)"
    return Probes(
        random_repeat=random_repeat,
        natural=natural,
        icl_repeat=icl_repeat,
        long_text=long_text,
        repeat_length=c.random_repeat.length,
        icl_length=c.icl_repeat.length,
        skipped_short=tokenized.short,
        notes=notes,
    )


def build_probes(probes_cfg, tokenizer) -> Probes:
    """All probe batches for this tokenizer, from the configured source; the config is checked first."""
    check_probe_config(probes_cfg, len(usable_ids(tokenizer)))
    return probes_from_texts(load_texts(probes_cfg), tokenizer, probes_cfg)


def probes_key(probes_cfg, tokenizer, version: int = PROBES_VERSION) -> str:
    """Cache key: the probe config, the tokenizer and the version of the probe construction."""
    config = OmegaConf.to_container(probes_cfg, resolve=True) if OmegaConf.is_config(probes_cfg) else probes_cfg
    blob = json.dumps({"config": config, "tokenizer": tokenizer_hash(tokenizer), "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_probes(probes_cfg, tokenizer, cache_dir: str | Path) -> Probes:
    """Build probes once per (tokenizer, probe config, PROBES_VERSION) and reuse them from `cache_dir`."""
    key = probes_key(probes_cfg, tokenizer)
    path = Path(cache_dir) / f"probes-{key}.pt"
    if path.exists():
        try:
            probes = Probes(**torch.load(path, weights_only=True))
            if probes.version == PROBES_VERSION:
                return probes
            log.warning("probe cache %s has version %s, not %s; rebuilding", path, probes.version, PROBES_VERSION)
        except Exception as err:
            log.warning("probe cache %s unreadable (%s); rebuilding", path, err)
    probes = build_probes(probes_cfg, tokenizer)
    probes.key = key
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(probes.__dict__, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return probes
