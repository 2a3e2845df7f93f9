"""Low-information tokens: token classes, enrichment and entropy on hand-built attention, hooks vs
output_attentions, and memory that does not grow with depth."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ckptstudy.measure.cost import Pass, Shape
from ckptstudy.measure.generation import Generation, NaturalLoops
from ckptstudy.measure.token_classes import CLASS_INDEX, classify, low_information_ids, vocabulary_classes
from ckptstudy.metrics import FamilyResult, low_info
from ckptstudy.metrics.low_info import KEY_CLASSES, context_inputs, context_result, context_statistics
from ckptstudy.params import check_family
from ckptstudy.reference import class_mass, entropy_counts, entropy_sums, uniform_mass
from ckptstudy.stats.bootstrap import Sample
from configured import family_params, loop_rule
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
    enrichment = torch.from_numpy(context_result("text", stats, None).heads["lowinfo/enrich_text"]).double()
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    onehot = torch.nn.functional.one_hot(key_classes[ids], 8).double()
    onehot = torch.cat([onehot, low_info[ids].double()[..., None]], -1)
    for layer, attn in enumerate(attentions):
        expected = class_mass(attn.double(), onehot, weight) / uniform_mass(onehot, weight)
        # the fused path sums in another order than eager attention: float32 rounding, not a difference
        torch.testing.assert_close(enrichment[layer], expected, equal_nan=True, atol=1e-6, rtol=1e-6)
    assert enrichment.shape == (2, 4, len(KEY_CLASSES)) and stats["mass"].shape == (3, 2, 4, len(KEY_CLASSES))


def uniform_attention_model(vocab_size: int = 512):
    """Every query-key product is 0: each query attends uniformly to all keys up to itself."""
    model = tiny_neox(vocab_size=vocab_size)
    heads = model.config.num_attention_heads
    hd = model.config.hidden_size // heads
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            qkv = layer.attention.query_key_value
            qkv.weight.view(heads, 3, hd, -1)[:, :2] = 0
            qkv.bias.view(heads, 3, hd)[:, :2] = 0
    return model


def loops_of(prompts: list[list[int]], generated: list[list[int]]) -> NaturalLoops:
    ids = torch.tensor(generated)
    rule = loop_rule()
    period, copies, onset = rule.detect(ids)
    return NaturalLoops(torch.tensor(prompts), Generation(ids, torch.zeros(ids.shape)), period, copies, onset, rule)


class FakeCheckpoint:
    """What low_info.measure reads from a JobContext, around hand-made natural loops."""

    batch_size = 4
    context_length = 512

    def __init__(self, loops: NaturalLoops, model=None, tokenizer=None, icl_repeat=None, long_text=None):
        self.loops, self.model, self.tokenizer = loops, model, tokenizer
        icl = torch.arange(20, 30).repeat(2, 3) if icl_repeat is None else icl_repeat
        text = torch.arange(20, 60).repeat(2, 1) if long_text is None else long_text
        self.probes = SimpleNamespace(
            natural=loops.prompts,
            icl_repeat=icl,
            icl_length=10,
            long_text=text,
            empty_reason=lambda probe: f"no document is long enough for probes.{probe}",
        )

    def natural_loops(self) -> NaturalLoops:
        return self.loops

    @property
    def shape(self) -> Shape:
        return Shape.of(self.model.config) if self.model is not None else Shape(2, 32, 4, 500, 512)

    def rows(self, p: Pass) -> int:
        return self.batch_size  # the budget is not what these tests are about


def test_natural_queries_start_at_the_first_copy_like_the_icl_ones():
    # prompt (40, 41) + generation 1 2 3 4 3 4 3 4: the loop (3, 4) starts at sequence index 4, its first copy
    # at 6. Token 3 is low-information, token 4 a content word. Under uniform attention a query at q has
    # entropy log(q + 1), so the first cycle's queries (4 and 5) would pull the means down.
    loops = loops_of([[40, 41]], [[1, 2, 3, 4, 3, 4, 3, 4]])
    ids, weight = context_inputs(FakeCheckpoint(loops), text_skip=5)["natural"]
    assert ids.tolist() == [[40, 41, 1, 2, 3, 4, 3, 4, 3, 4]]
    key_classes = torch.full((512,), CLASS_INDEX["OTHER"])
    key_classes[4] = CLASS_INDEX["CONTENT_WORD"]
    low = torch.zeros(512, dtype=torch.bool)
    low[3] = True
    stats = context_statistics(uniform_attention_model(), ids, weight, key_classes, low, batch_size=1)
    # [layer, head, kind (low-info, content), (nats, normalised)]: summed over rows / rows counted
    entropy = stats["entropy"].sum(0) / stats["rows"].sum(0)[None, None, :, None]
    torch.testing.assert_close(
        entropy[..., 0, 0], torch.full((2, 4), (math.log(7) + math.log(9)) / 2, dtype=torch.double)
    )
    torch.testing.assert_close(
        entropy[..., 1, 0], torch.full((2, 4), (math.log(8) + math.log(10)) / 2, dtype=torch.double)
    )
    # without key 0, query q sees q keys
    nosink = (stats["entropy_nosink"].sum(0) / stats["rows_nosink"].sum(0)[None, None, :, None])[..., 0, 0]
    torch.testing.assert_close(nosink, torch.full((2, 4), (math.log(6) + math.log(8)) / 2, dtype=torch.double))
    assert weight[0].nonzero().flatten().tolist() == [6, 7, 8, 9]


def test_a_context_without_a_query_kind_or_key_class_gives_nan_with_reasons():
    loops = loops_of([[40, 41]], [[1, 2, 3, 4, 3, 4, 3, 4]])
    ids, weight = context_inputs(FakeCheckpoint(loops), text_skip=5)["natural"]
    key_classes = torch.full((512,), CLASS_INDEX["OTHER"])  # no newline, no content word
    stats = context_statistics(tiny_neox(), ids, weight, key_classes, torch.zeros(512, dtype=torch.bool), 1)
    result = context_result("natural", stats, loops)
    for key in (
        "lowinfo/entropy_lowinfo_natural",
        "lowinfo/entropy_content_natural_norm",
        "lowinfo/entropy_diff_natural",
    ):
        assert math.isnan(result.scalars[key]), key
    assert (
        "no low-information query token in the natural context" in result.nan_reasons["lowinfo/entropy_lowinfo_natural"]
    )
    assert "no content-word query" in result.nan_reasons["lowinfo/entropy_content_natural_nosink"]
    assert "no NEWLINE key" in result.nan_reasons["lowinfo/enrich_newline_natural_nosink_max"]
    assert result.unexplained_nans() == []
    ratios = low_info.newline_ratios(with_icl_newline(result, 0.0, 2.0))
    assert "no NEWLINE key" in ratios.nan_reasons["lowinfo/enrich_newline_natural_over_icl_nosink"]
    both = with_icl_newline(with_icl_newline(FamilyResult(), 3.0, 3.0, key="natural"), 0.0, 2.0)
    both.update(low_info.newline_ratios(both))  # a ratio of two samples is evaluated where both are
    assert math.isnan(both.scalars["lowinfo/enrich_newline_natural_over_icl"])
    assert "ICL newline enrichment is 0" in both.nan_reasons["lowinfo/enrich_newline_natural_over_icl"]
    assert both.scalars["lowinfo/enrich_newline_natural_over_icl_nosink"] == 1.5


def with_icl_newline(result: FamilyResult, value: float, nosink: float, key: str = "icl") -> FamilyResult:
    """`result` plus newline enrichments of the `key` context (with and without the sink) that are the
    statistics of constant per-prompt samples."""
    for suffix, v in (("", value), ("_nosink", nosink)):
        result.stat(f"lowinfo/enrich_newline_{key}{suffix}", Sample("mean", np.full(4, v), prompts=key), None)
    return result


def test_no_natural_loop_gives_nan_with_reasons(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    newline = tiny_tokenizer.convert_tokens_to_ids("Ċ")
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(1, vocab, (2, 48), generator=gen)
    text[:, ::5] = newline
    loops = loops_of([[40, 41], [42, 43]], torch.arange(100, 116).view(2, 8).tolist())  # nothing loops
    ctx = FakeCheckpoint(
        loops, tiny_neox(vocab_size=vocab), tiny_tokenizer, icl_repeat=text[:, :12].repeat(1, 3), long_text=text
    )
    ctx.probes.icl_length = 12
    result = low_info.measure(ctx, quantile=0.2, text_skip=8)
    for key in ("lowinfo/entropy_lowinfo_natural", "lowinfo/enrich_newline_natural_nosink"):
        assert math.isnan(result.scalars[key]), key
        assert "no prompt's continuation loops" in result.nan_reasons[key], key
    headline = "lowinfo/enrich_newline_natural_over_icl_nosink"
    assert math.isnan(result.scalars[headline]) and "no prompt's continuation loops" in result.nan_reasons[headline]
    assert math.isfinite(result.scalars["lowinfo/enrich_newline_icl_nosink"])
    assert math.isfinite(result.scalars["lowinfo/enrich_newline_text"])
    assert result.unexplained_nans() == []


def test_empty_long_text_gives_text_nan_with_the_probes_reason(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    loops = loops_of([[40, 41]], [[1, 2, 3, 4, 3, 4, 3, 4]])
    ctx = FakeCheckpoint(loops, tiny_neox(vocab_size=vocab), tiny_tokenizer, long_text=torch.zeros(0, 64).long())
    result = low_info.measure(ctx, quantile=0.2, text_skip=8)
    for key in ("lowinfo/enrich_newline_text_nosink", "lowinfo/entropy_content_text"):
        assert math.isnan(result.scalars[key]) and "probes.long_text" in result.nan_reasons[key], key
    assert result.unexplained_nans() == []


@pytest.mark.parametrize(
    ("param", "value", "valid"),
    [
        ("quantile", 0.0, r"a number in \(0, 1\)"),
        ("quantile", 1.5, r"a number in \(0, 1\)"),
        ("text_skip", -1, "an integer >= 0"),
    ],
)
def test_parameters_are_checked_against_their_declared_ranges(param, value, valid):
    values = {"_target_": "ckptstudy.metrics.low_info.measure", **family_params("low_info", **{param: value})}
    with pytest.raises(ValueError, match=rf"^metrics\.low_info\.{param}={value!r} is not valid; valid: {valid}"):
        check_family("low_info", values)


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


@pytest.mark.long  # a real multirun / two measuring subprocesses: left out of `make test-fast`
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


def measure_on_constructed_loops(tiny_tokenizer, model=None):
    """low_info.measure on a tiny model: three natural prompts, two of which loop (with a newline in the
    cycle), and newline-rich ICL and text probes; chunks of 2 and 1 rows."""
    vocab = len(tiny_tokenizer)
    newline = tiny_tokenizer.convert_tokens_to_ids("Ċ")
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(1, vocab, (3, 48), generator=gen)
    text[:, ::5] = newline
    loops = loops_of(
        [[40, 41], [42, 43], [44, 45]],
        [[1, newline, 3, 4, newline, 4, newline, 4], [5, 6, 7, 8, 9, 10, 11, 12], [newline, 6, 7, 6, 7, 6, 7, 6]],
    )
    model = model if model is not None else tiny_neox(vocab_size=vocab)
    ctx = FakeCheckpoint(loops, model, tiny_tokenizer, icl_repeat=text[:, :12].repeat(1, 3), long_text=text)
    ctx.batch_size = 2
    ctx.probes.icl_length = 12
    return low_info.measure(ctx, quantile=0.2, text_skip=8)


def test_every_scalar_but_the_vocabulary_share_is_a_statistic_over_prompts(tiny_tokenizer):
    result = measure_on_constructed_loops(tiny_tokenizer)
    assert result.no_interval == {"lowinfo/low_info_vocab_share": low_info.VOCABULARY}
    assert set(result.samples) == set(result.scalars) - set(result.no_interval)
    assert result.unexplained_nans() == []
    assert math.isfinite(result.scalars["lowinfo/enrich_newline_natural_over_icl_nosink"])
    natural = result.samples["lowinfo/enrich_newline_natural_nosink"]
    assert natural.prompts == "natural" and natural.values.shape == (3,)  # one value per natural prompt
    assert natural.weights[1] == 0 and not natural.values[1].any()  # the prompt that does not loop
    per_head = result.samples["lowinfo/enrich_newline_icl_max"]
    assert per_head.prompts == "icl_repeat" and per_head.values.shape == (3, 2, 4)  # [prompt, layer, head]
    # the head maximum is the maximum of the per-head array the record keeps (same per-prompt rows)
    newline = result.heads["lowinfo/enrich_icl"][..., KEY_CLASSES.index("NEWLINE")]
    assert result.scalars["lowinfo/enrich_newline_icl_max"] == pytest.approx(float(newline.max()), rel=1e-6)


def test_no_attention_preference_gives_intervals_that_sit_on_one(tiny_tokenizer):
    # the opposite of the finding: a model that attends uniformly has enrichment exactly 1 in every context and
    # for every prompt, so no resample can make natural loops look newline-enriched against ICL
    from types import SimpleNamespace

    result = measure_on_constructed_loops(tiny_tokenizer, uniform_attention_model(len(tiny_tokenizer)))
    ci = result.intervals(SimpleNamespace(n=200, level=0.95, seed=0, min_prompts=2)).ci
    for key in ("lowinfo/enrich_newline_natural_over_icl_nosink", "lowinfo/enrich_newline_text_max"):
        assert result.scalars[key] == pytest.approx(1.0, abs=1e-5), key
        assert ci[key] == pytest.approx([1.0, 1.0], abs=1e-5), key
    # while a real (random) model's per-prompt differences give intervals of some width
    real = (
        measure_on_constructed_loops(tiny_tokenizer)
        .intervals(SimpleNamespace(n=200, level=0.95, seed=0, min_prompts=2))
        .ci
    )
    low, high = real["lowinfo/enrich_newline_icl_max"]
    assert high - low > 1e-3
