"""Probe construction: unambiguous induction targets, long_text windows inside one document, bad input
refused before any work, and a cache key that changes with the probe construction's version."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ckptstudy import probes as probes_module
from ckptstudy.probes import (
    PROBES_VERSION,
    ProbeError,
    build_probes,
    cached_probes,
    long_text_ids,
    probes_from_texts,
    probes_key,
    random_repeat_ids,
    usable_ids,
)

WORDS = 400


class WordTokenizer:
    """Words `w0`..`w399` are ids 2..401; 0 is `<eos>` (also BOS), 1 is `<pad>`; one token per word."""

    all_special_ids = (0, 1)
    bos_token_id = eos_token_id = 0
    pad_token_id = 1
    backend_tokenizer = None

    def __len__(self) -> int:
        return WORDS + 2

    def get_vocab(self) -> dict[str, int]:
        return {"<eos>": 0, "<pad>": 1, **{f"w{i}": i + 2 for i in range(WORDS)}}

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, list]:
        """Like a Hugging Face tokenizer: one text -> ids, a list of texts -> a list of ids."""

        def encode(one: str) -> list[int]:
            return [int(word[1:]) + 2 for word in one.split()]

        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}


def document(first: int, length: int) -> str:
    """`length` distinct words starting at word `first`."""
    return " ".join(f"w{i}" for i in range(first, first + length))


def probe_config(**overrides):
    """A probe config (the `probes` group's keys) with small sizes, reading local files."""
    cfg = OmegaConf.create(
        {
            "source": "files",
            "files_glob": None,
            "dataset": None,
            "split": None,
            "text_field": "text",
            "max_texts": 3000,
            "seed": 0,
            "random_repeat": {"n": 16, "length": 50},
            "natural": {"n": 8, "length": 4},
            "icl_repeat": {"n": 8, "length": 4, "copies": 4},
            "long_text": {"n": 3, "length": 40},
        }
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


# -- random_repeat: every token of the second copy has exactly one previous occurrence


def test_random_repeat_copies_have_no_repeated_token():
    ids = torch.arange(2, 62)  # 60 usable ids, 50 drawn per copy: with replacement almost every row would repeat
    rows = random_repeat_ids(64, 50, ids, seed=0, bos_id=0)
    assert rows.shape == (64, 101) and bool((rows[:, 0] == 0).all())
    first, second = rows[:, 1:51], rows[:, 51:]
    assert torch.equal(first, second)
    assert all(len(set(row.tolist())) == 50 for row in first)
    assert bool(((first >= 2) & (first < 62)).all())
    assert torch.equal(rows, random_repeat_ids(64, 50, ids, seed=0, bos_id=0))
    assert not torch.equal(rows, random_repeat_ids(64, 50, ids, seed=1, bos_id=0))


def test_random_repeat_longer_than_the_usable_ids_is_refused():
    with pytest.raises(ProbeError, match=r"probes.random_repeat.length=61 .*<= 60"):
        random_repeat_ids(2, 61, torch.arange(2, 62), seed=0, bos_id=0)
    cfg = probe_config(**{"random_repeat.length": WORDS + 1})
    with pytest.raises(ProbeError, match=rf"probes.random_repeat.length={WORDS + 1} .*<= {WORDS}"):
        build_probes(cfg, WordTokenizer())


def test_usable_ids_leave_out_special_tokens():
    assert usable_ids(WordTokenizer()).tolist() == list(range(2, WORDS + 2))


# -- long_text: windows from single documents long enough for the window


def test_long_text_windows_never_cross_a_document_boundary():
    # short documents (5..30 tokens) around three long ones (40, 45, 80 tokens); each document's words are
    # its own, so a row that mixed two documents would not be a prefix of one
    lengths = [5, 40, 12, 30, 45, 7, 80, 20]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    docs = [document(s, n) for s, n in zip(starts, lengths)]
    tok = WordTokenizer()
    rows, note = long_text_ids(docs, tok, n=3, length=40, seed=0)
    assert rows.shape == (3, 40) and note == ""
    prefixes = {tuple(tok(d)["input_ids"][:40]) for d in docs if len(tok(d)["input_ids"]) >= 40}
    assert {tuple(r) for r in rows.tolist()} == prefixes
    assert not bool((rows == tok.eos_token_id).any())

    rows, note = long_text_ids(docs, tok, n=5, length=40, seed=0)
    assert rows.shape == (3, 40) and "3 of 5 windows" in note


def test_no_document_long_enough_gives_an_empty_long_text_with_the_reason():
    docs = [document(30 * i, 10 + i) for i in range(10)]  # 10..19 tokens each
    probes = probes_from_texts(docs, WordTokenizer(), probe_config())
    assert probes.long_text.shape == (0, 40) and probes.long_text.dtype == torch.long
    assert "no single document has 40 tokens" in probes.notes["long_text"]
    assert "longest of the 10 documents has 19" in probes.notes["long_text"]
    assert probes.empty_reason("long_text") == probes.notes["long_text"]
    assert probes.empty_reason("natural") is None and probes.natural.shape == (8, 4)


# -- the cache key covers the version of the probe construction


def test_version_is_part_of_the_key_and_of_the_probes(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text(document(0, 60))
    (tmp_path / "b.txt").write_text(document(100, 20))
    cfg = probe_config(files_glob=str(tmp_path / "*.txt"))
    tok = WordTokenizer()
    assert PROBES_VERSION == 2
    assert probes_key(cfg, tok) == probes_key(cfg, tok, PROBES_VERSION)
    assert probes_key(cfg, tok, 1) != probes_key(cfg, tok, 2)

    cache = tmp_path / "cache"
    built = cached_probes(cfg, tok, cache)
    assert built.version == PROBES_VERSION and built.key == probes_key(cfg, tok)
    assert built.long_text.shape == (1, 40) and "1 of 3 windows" in built.notes["long_text"]
    again = cached_probes(cfg, tok, cache)
    assert again.notes == built.notes and again.version == built.version and torch.equal(again.natural, built.natural)

    monkeypatch.setattr(probes_module, "PROBES_VERSION", 3)
    assert probes_module.probes_key(cfg, tok, probes_module.PROBES_VERSION) != built.key


# -- bad input is refused before any text is read, naming the value and the valid range


BAD_VALUES = [
    ("random_repeat.n", 0, ">= 1"),
    ("random_repeat.length", 0, ">= 2"),
    ("natural.n", -1, ">= 1"),
    ("natural.length", 0, ">= 1"),
    ("icl_repeat.n", 0, ">= 1"),
    ("icl_repeat.length", -3, ">= 1"),
    ("icl_repeat.copies", 1, ">= 2"),
    ("long_text.n", 0, ">= 1"),
    ("long_text.length", 0, ">= 1"),
]


@pytest.mark.parametrize(("key", "value", "valid"), BAD_VALUES)
def test_bad_probe_sizes_are_refused_before_reading_text(key, value, valid, monkeypatch):
    monkeypatch.setattr(probes_module, "load_texts", lambda cfg: pytest.fail("read texts before checking"))
    with pytest.raises(ProbeError, match=rf"probes\.{key}={value} is not valid: it must be {valid}"):
        build_probes(probe_config(**{key: value}), WordTokenizer())


@pytest.mark.parametrize("texts", [[], [""], ["", "  \n\t ", "\n\n"]])
def test_empty_or_blank_texts_are_refused(texts):
    with pytest.raises(ProbeError, match=r"all empty or whitespace-only \(need at least 1 text"):
        probes_from_texts(texts, WordTokenizer(), probe_config())


def test_blank_files_are_refused_and_a_glob_without_files_names_the_pattern(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("   \n\n  ")
    with pytest.raises(ProbeError, match=r"gave 2 texts, all empty or whitespace-only"):
        build_probes(probe_config(files_glob=str(tmp_path / "*.txt")), WordTokenizer())
    with pytest.raises(ProbeError, match=r"probes.source='files': .*\*.md' matches no file"):
        build_probes(probe_config(files_glob=str(tmp_path / "*.md")), WordTokenizer())
