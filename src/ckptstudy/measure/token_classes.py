"""Token classes from each vocabulary entry's decoded text, and unigram-surprisal low information.

Classes (one per token id): NEWLINE (contains a line break), SENTENCE_END (only . ! ? and closing
quotes), BRACKET (only brackets), PUNCTUATION (only other punctuation or symbols), NUMBER (digits,
optionally with , . separators), FUNCTION_WORD (a whole word in the English stop-word list of the
`stop-words` package), CONTENT_WORD (any other whole word), OTHER (word pieces, whitespace, specials).

Byte-level BPE details: a leading space marks a token that starts a word; a lower-case alphabetic
token without one continues a word (e.g. "ing", or "the" inside "theory") and is OTHER, not a word.
A capitalised token without a leading space starts a word (sentence start, after a newline or quote).
Tokens that are half of a multi-byte character decode to U+FFFD and are OTHER.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import torch

CLASSES = (
    "NEWLINE",
    "SENTENCE_END",
    "PUNCTUATION",
    "BRACKET",
    "NUMBER",
    "FUNCTION_WORD",
    "CONTENT_WORD",
    "OTHER",
)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
BRACKETS = set("()[]{}<>")
SENTENCE_END = set(".!?")
QUOTES = set("\"'”’»)")


@lru_cache(maxsize=1)
def function_words() -> frozenset[str]:
    """The English stop-word list of the `stop-words` package (lower case)."""
    from stop_words import get_stop_words

    return frozenset(w.lower() for w in get_stop_words("en"))


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def classify(text: str, special: bool = False) -> str:
    """The class of one token from its decoded text."""
    if special or text == "" or "\ufffd" in text:
        return "OTHER"
    if "\n" in text or "\r" in text:
        return "NEWLINE"
    core = text.strip()
    if not core:
        return "OTHER"
    if all(ch in BRACKETS for ch in core):
        return "BRACKET"
    if any(ch in SENTENCE_END for ch in core) and all(ch in SENTENCE_END or ch in QUOTES for ch in core):
        return "SENTENCE_END"
    if all(_is_punct(ch) for ch in core):
        return "PUNCTUATION"
    if core[0].isdigit() and all(ch.isdigit() or ch in ",." for ch in core):
        return "NUMBER"
    word = core.replace("'", "").replace("’", "")
    if word.isalpha():
        starts_word = text[0].isspace() or core[0].isupper()
        if not starts_word:
            return "OTHER"
        return "FUNCTION_WORD" if core.lower().replace("’", "'") in function_words() else "CONTENT_WORD"
    return "OTHER"


def vocabulary_classes(tokenizer) -> torch.Tensor:
    """Class index of every token id: [len(tokenizer)] long."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
    return torch.tensor([CLASS_INDEX[classify(t, i in special)] for i, t in enumerate(texts)], dtype=torch.long)


def unigram_surprisal(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """-log p(token) from add-one smoothed unigram counts over `token_ids`: [vocab_size] (nats)."""
    counts = torch.bincount(token_ids.flatten(), minlength=vocab_size)[:vocab_size].double() + 1
    return -(counts / counts.sum()).log()


def low_information_ids(token_ids: torch.Tensor, vocab_size: int, quantile: float) -> torch.Tensor:
    """Bool [vocab_size]: ids whose surprisal is at or below the `quantile` of surprisal over the
    corpus's token occurrences (so about that share of running text is low-information)."""
    if not 0 < quantile < 1:
        raise ValueError(f"metrics.low_info.quantile={quantile} must be between 0 and 1")
    surprisal = unigram_surprisal(token_ids, vocab_size)
    threshold = torch.quantile(surprisal[token_ids.flatten()], quantile)
    return surprisal <= threshold
