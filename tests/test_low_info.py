"""Low-information tokens: token classes, enrichment and entropy on hand-built attention, hooks vs
output_attentions, and memory that does not grow with depth."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from ckptstudy.metrics.low_info import (
    KEY_CLASSES,
    class_mass,
    context_statistics,
    entropy_counts,
    entropy_sums,
    uniform_mass,
)
from ckptstudy.token_classes import CLASS_INDEX, classify, low_information_ids, vocabulary_classes
from conftest import tiny_neox


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n", "NEWLINE"),
        ("\r\n", "NEWLINE"),
        (".\n\n", "NEWLINE"),
        ("  \n", "NEWLINE"),
        (".", "SENTENCE_END"),
        ("?!", "SENTENCE_END"),
        ('."', "SENTENCE_END"),
        ("...", "SENTENCE_END"),
        (",", "PUNCTUATION"),
        (" ,", "PUNCTUATION"),
        ("--", "PUNCTUATION"),
        (" =", "PUNCTUATION"),
        ("):", "PUNCTUATION"),
        ("(", "BRACKET"),
        (" [", "BRACKET"),
        ("})", "BRACKET"),
        ("42", "NUMBER"),
        (" 3.14", "NUMBER"),
        (" 1,000", "NUMBER"),
        (" the", "FUNCTION_WORD"),
        ("The", "FUNCTION_WORD"),
        (" of", "FUNCTION_WORD"),
        (" don't", "FUNCTION_WORD"),
        (" house", "CONTENT_WORD"),
        ("Python", "CONTENT_WORD"),
        ("the", "OTHER"),
        ("ing", "OTHER"),  # pieces inside a word (no leading space, lower case)
        (" ", "OTHER"),
        ("\ufffd", "OTHER"),
        ("ab12", "OTHER"),
    ],
)
def test_token_classes_follow_byte_level_bpe_conventions(text, expected):
    assert classify(text) == expected


def test_special_tokens_are_other_and_real_tokenizer_is_covered(tiny_tokenizer):
    assert classify("<|endoftext|>", special=True) == "OTHER"
    classes = vocabulary_classes(tiny_tokenizer)
    assert classes.shape == (len(tiny_tokenizer),)
    ids = {t: tiny_tokenizer.convert_tokens_to_ids(t) for t in ("Ċ", "Ġthe", ",", "(")}
    assert classes[ids["Ċ"]] == CLASS_INDEX["NEWLINE"]  # byte-level newline decodes to "\n"
    assert classes[ids["Ġthe"]] == CLASS_INDEX["FUNCTION_WORD"]
    assert classes[ids[","]] == CLASS_INDEX["PUNCTUATION"] and classes[ids["("]] == CLASS_INDEX["BRACKET"]
    assert classes[tiny_tokenizer.eos_token_id] == CLASS_INDEX["OTHER"]


def test_low_information_is_the_frequent_end_of_the_corpus():
    corpus = torch.tensor([1] * 50 + [2] * 30 + [3] * 15 + [4] * 5)
    low = low_information_ids(corpus, 6, 0.4)
    assert low.tolist() == [False, True, False, False, False, False]
    assert low_information_ids(corpus, 6, 0.6)[:3].tolist() == [False, True, True]
    with pytest.raises(ValueError, match=r"quantile=1\.5"):
        low_information_ids(corpus, 6, 1.5)


def causal_uniform(batch: int, seq: int) -> torch.Tensor:
    rows = torch.tril(torch.ones(seq, seq))
    return (rows / rows.sum(-1, keepdim=True)).expand(batch, 1, seq, seq).double()


def onehot_of(classes: torch.Tensor, n: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, n).double()


def test_uniform_attention_has_enrichment_one_and_entropy_log_n():
    classes = torch.tensor([[0, 1, 0, 0, 1, 1, 0]])
    attn, onehot, weight = causal_uniform(1, 7), onehot_of(classes), torch.ones(1, 7).double()
    for sink in (True, False):
        enrichment = class_mass(attn, onehot, weight, sink) / uniform_mass(onehot, weight, sink)
        torch.testing.assert_close(enrichment, torch.ones(1, 2, dtype=torch.double))
    kind = torch.tensor([[1, 1, 2, 2, 1, 0, 2]])
    sums = entropy_sums(attn, kind)
    counts = entropy_counts(kind)
    # rows 1.. count (row 0 has one key); row q has entropy log(q + 1), normalised entropy 1
    assert counts.tolist() == [2, 3]
    assert sums[0, 0, 0] == pytest.approx(math.log(2) + math.log(5))
    assert sums[0, 1, 0] == pytest.approx(math.log(3) + math.log(4) + math.log(7))
    assert sums[0, :, 1].tolist() == pytest.approx([2.0, 3.0])


def test_all_mass_on_newlines_gives_the_inverse_share():
    # keys: class 1 = newline at positions 2 and 5; each query q >= 2 puts all its mass on the last newline
    classes = torch.tensor([[0, 0, 1, 0, 0, 1, 0, 0]])
    seq = classes.shape[1]
    attn = torch.zeros(1, 1, seq, seq, dtype=torch.double)
    weight = torch.zeros(1, seq, dtype=torch.double)
    for q in range(seq):
        last = max(k for k in range(q + 1) if classes[0, k] == 1 or k == 0)
        attn[0, 0, q, last] = 1
        weight[0, q] = 1.0 if q >= 2 else 0.0
    onehot = onehot_of(classes)
    enrichment = class_mass(attn, onehot, weight) / uniform_mass(onehot, weight)
    newline_share = sum((1 + (q >= 5)) / (q + 1) for q in range(2, seq))
    assert enrichment[0, 1] == pytest.approx((seq - 2) / newline_share)
    assert enrichment[0, 0] == 0
    # a sink head (all mass on key 0) has enrichment 0 for newlines with the sink, NaN-free without it
    sink_attn = torch.zeros_like(attn)
    sink_attn[..., 0] = 1
    assert class_mass(sink_attn, onehot, weight)[0, 1] == 0
    assert class_mass(sink_attn, onehot, weight, sink=False).sum() == 0  # renormalising nothing gives nothing


def test_hooks_match_output_attentions(tiny_tokenizer):
    model = tiny_neox(vocab_size=len(tiny_tokenizer), seed=4)
    ids = torch.randint(2, len(tiny_tokenizer), (3, 20))
    weight = torch.zeros(3, 20, dtype=torch.double)
    weight[:, 5:] = 1
    key_classes = vocabulary_classes(tiny_tokenizer)
    low_info = low_information_ids(ids.flatten(), len(tiny_tokenizer), 0.3)
    stats = context_statistics(model, ids, weight, key_classes, low_info, batch_size=2)
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    onehot = torch.nn.functional.one_hot(key_classes[ids], 8).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], -1)
    for layer, attn in enumerate(attentions):
        expected = class_mass(attn.double(), onehot, weight) / uniform_mass(onehot, weight)
        torch.testing.assert_close(stats["enrich"][layer], expected, equal_nan=True)
    assert stats["enrich"].shape == (2, 4, len(KEY_CLASSES))


MEMORY_PROBE = r"""
import json, resource, sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from ckptstudy.metrics.low_info import context_statistics
layers = int(sys.argv[1])
torch.manual_seed(0)
model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers,
    num_attention_heads=8, intermediate_size=64, max_position_embeddings=1024, attn_implementation="eager")).eval()
ids = torch.randint(0, 64, (8, 768))
weight = torch.ones(8, 768, dtype=torch.double)
classes = torch.randint(0, 8, (64,))
low = torch.rand(64) < 0.2
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
context_statistics(model, ids, weight, classes, low, batch_size=8)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": after - before}))
"""


def test_memory_does_not_grow_with_depth():
    # one layer's attention here: 8 x 8 x 768 x 768 float32 = 151 MB (x2 as float64 in the reducer);
    # keeping every layer's would add >= 4 x 151 MB for the 4 extra layers
    def growth(layers: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(layers)], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["growth_kb"]

    shallow, deep = growth(2), growth(6)
    assert deep - shallow < 150_000, (shallow, deep)
