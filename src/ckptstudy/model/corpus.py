"""Text corpora: where documents come from and how they are read. The only place that finds or loads text.

The micro suite trains on this Python's standard-library sources (`load_corpus`); the probes read the
configured probe source (`load_source_texts`: held-out standard-library sources, local files, or a
Hugging Face dataset such as Minipile). Local files are read through `datasets` as one document per file.
Every function takes plain values (patterns, names, sizes), never a config object.
"""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path

SOURCES = ("stdlib", "minipile", "files")


class CorpusError(ValueError):
    """A corpus that cannot be found or read; the message names the pattern or dataset."""


def stdlib_text_files(pattern: str) -> list[str]:
    """Source files of this Python's standard library matching `pattern`, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in root.glob(pattern) if p.is_file())
    if not files:
        raise CorpusError(f"no standard-library files match {pattern!r} under {root}")
    return files


def matching_files(pattern: str) -> list[str]:
    """Files matching a glob pattern (relative to the working directory, or absolute; `**` recurses), sorted."""
    files = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise CorpusError(f"{pattern!r} matches no file (relative to {Path.cwd()})")
    return files


def load_local_texts(files: list[str]):
    """Local text files as a `datasets` Dataset, one document per file (undecodable bytes replaced)."""
    import datasets  # heavy (pyarrow, pandas): loaded only when text is actually read

    datasets.disable_progress_bars()
    return datasets.load_dataset(
        "text", data_files=files, split="train", sample_by="document", encoding_errors="replace"
    )


def load_corpus(pattern: str, max_chars: int) -> list[str]:
    """Standard-library documents matching `pattern`, in file order, until `max_chars` characters are
    reached (the document that crosses the limit is kept whole). The micro suite's training text."""
    texts, total = [], 0
    for text in load_local_texts(stdlib_text_files(pattern))["text"]:
        if total >= max_chars:
            break
        texts.append(text)
        total += len(text)
    return texts


def load_source_texts(
    source: str,
    files_glob: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    text_field: str = "text",
    max_texts: int | None = None,
) -> list[str]:
    """The first `max_texts` documents of a text source, as read (blank ones included):

    - `stdlib`: this Python's standard-library files matching `files_glob`
    - `files`: local files matching `files_glob`
    - `minipile` (or any dataset name): `split` of the Hugging Face dataset `dataset`, column `text_field`,
      from the HF cache when offline
    """
    if source == "stdlib":
        ds = load_local_texts(stdlib_text_files(files_glob or "*.py"))
    elif source == "files":
        ds = load_local_texts(matching_files(files_glob or ""))
    elif source == "minipile":
        import datasets  # heavy, see load_local_texts

        try:
            ds = datasets.load_dataset(dataset, split=split)
        except Exception as err:
            raise CorpusError(
                f"cannot load dataset {dataset!r} split {split!r} ({err}); "
                "pre-download it into the HF cache and set HF_DATASETS_OFFLINE=1, or use the stdlib source"
            ) from err
    else:
        raise CorpusError(f"text source {source!r} is not valid; choose one of {', '.join(SOURCES)}")
    if text_field not in ds.column_names:
        raise CorpusError(f"text field {text_field!r} is not a column of the {source!r} source: {ds.column_names}")
    return list(ds[text_field][:max_texts])
