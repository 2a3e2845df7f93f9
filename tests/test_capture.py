"""The fused attention-statistics path (`attention_stats`, `capture.capture_stats`) against materialised
weights: float64 pure functions (including a strong sink), the eager reference on random tiny models, and
the model's own output (unchanged by the registered attention function)."""

from __future__ import annotations

import pytest
import torch

from ckptstudy.measure.attention_stats import (
    STATS_IMPLEMENTATION,
    StatsRequest,
    attention_with_lse,
    blockwise_logsumexp,
    layer_statistics,
    reference_statistics,
)
from ckptstudy.measure.capture import (
    UnsupportedModelError,
    attention_implementation,
    capture,
    capture_stats,
    model_parts,
)
from ckptstudy.metrics.icl_heads import repeat_pattern_positions
from ckptstudy.reference import class_mass, eager_capture_stats, entropy_sums, head_pattern_sums
from conftest import tiny_neox

KEYS = ("diagonal", "mass", "mass_nosink", "entropy", "entropy_nosink")


def random_request(n: int, s: int, classes: int = 6, seed: int = 0, repeat: int | None = None) -> StatsRequest:
    gen = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(torch.randint(0, classes - 1, (n, s), generator=gen), classes - 1).double()
    extra = (torch.rand(n, s, 1, generator=gen) < 0.3).double()  # an overlapping class, like LOW_INFO
    weight = (torch.rand(n, s, generator=gen) < 0.7).double() * torch.rand(n, s, generator=gen)
    kind = torch.randint(0, 3, (n, s), generator=gen)
    diagonals = repeat_pattern_positions(repeat) if repeat else {"prev": (torch.arange(1, s), torch.arange(0, s - 1))}
    return StatsRequest(
        diagonals=diagonals, key_values=torch.cat([onehot, extra], -1), query_weight=weight, query_kind=kind
    )


def materialised(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    s = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scale
    return scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


@pytest.mark.parametrize("sink", [0.0, 30.0])
def test_pure_statistics_equal_materialised_weights_in_float64(sink):
    gen = torch.Generator().manual_seed(1)
    b, h, s, d = 3, 4, 37, 16
    q = torch.randn(b, h, s, d, dtype=torch.float64, generator=gen)
    k = torch.randn(b, h, s, d, dtype=torch.float64, generator=gen)
    scale = d**-0.5
    if sink:  # key 0 aligned with every query: typical p0 ~ 1 - 1e-12 (1 - p0 by subtraction keeps ~4 digits)
        k[:, :, 0] = q.mean(2) / q.mean(2).norm(dim=-1, keepdim=True) * sink
        q = q + 4 * k[:, :, :1] / sink
        assert materialised(q, k, scale)[..., 1:, 0].median() > 1 - 1e-9
    _, lse = attention_with_lse(q, k, q, scale)
    request = random_request(b, s)
    fused = layer_statistics(q, k, scale, lse, request)
    reference = reference_statistics(materialised(q, k, scale), request)
    assert set(fused) == set(KEYS)
    for key in KEYS:
        torch.testing.assert_close(fused[key], reference[key], atol=1e-9, rtol=1e-9, msg=key)


def test_reference_statistics_equal_the_reference_oracles():
    gen = torch.Generator().manual_seed(2)
    attn = materialised(torch.randn(2, 3, 30, 8, generator=gen), torch.randn(2, 3, 30, 8, generator=gen), 0.5).double()
    request = random_request(2, 30, repeat=14)
    ref = reference_statistics(attn, request)
    torch.testing.assert_close(ref["diagonal"], head_pattern_sums(attn, 14))
    torch.testing.assert_close(ref["mass"], class_mass(attn, request.key_values, request.query_weight))
    torch.testing.assert_close(
        ref["mass_nosink"], class_mass(attn, request.key_values, request.query_weight, sink=False)
    )
    torch.testing.assert_close(ref["entropy"], entropy_sums(attn, request.query_kind))
    torch.testing.assert_close(ref["entropy_nosink"], entropy_sums(attn, request.query_kind, sink=False))


def test_blockwise_logsumexp_matches_the_fused_kernel():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 70, 8, generator=gen), torch.randn(2, 3, 70, 8, generator=gen)
    _, lse = attention_with_lse(q, k, k, 0.3)
    torch.testing.assert_close(blockwise_logsumexp(q, k, 0.3, block=16), lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_capture_equals_eager_capture_on_a_random_model(dtype):
    model = tiny_neox(vocab_size=300, layers=3, d_model=32, heads=4, seed=4).to(dtype)
    n, s = 5, 41
    ids = torch.randint(0, 300, (n, s), generator=torch.Generator().manual_seed(5))
    request = random_request(n, s, repeat=20)
    fused = capture_stats(model, ids, request, batch_size=2)
    eager = eager_capture_stats(model, ids, request, batch_size=3)
    rows = request.query_weight.shape[0] * s
    for layer in range(3):
        for key in KEYS:  # eager softmax runs in float32 even for a float64 model: 1e-4 on per-row means
            torch.testing.assert_close(
                fused.attn[layer][key] / rows, eager.attn[layer][key] / rows, atol=1e-4 / s, rtol=1e-4, msg=key
            )


def test_fused_capture_leaves_the_model_output_unchanged():
    model = tiny_neox(seed=7)
    ids = torch.randint(0, 500, (3, 25))
    with torch.no_grad(), attention_implementation(model, "sdpa"):
        expected = model(input_ids=ids).logits.sum(0)
    cap = capture_stats(model, ids, random_request(3, 25), logits_fn=lambda logits, _ids: logits.sum(0), batch_size=2)
    torch.testing.assert_close(cap.logits, expected, atol=1e-5, rtol=1e-5)


def test_attention_implementation_is_restored_even_after_an_error():
    model = tiny_neox(seed=8)
    assert model.config._attn_implementation == "sdpa"  # how checkpoints load (the neox builder's default)
    with pytest.raises(RuntimeError), attention_implementation(model, "eager"):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    capture_stats(model, torch.randint(0, 500, (1, 10)), random_request(1, 10))
    assert model.config._attn_implementation == "sdpa"
    capture(model, torch.randint(0, 500, (1, 10)), attn_fn=lambda _l, attn, _c: attn.sum())  # eager for the pass
    assert model.config._attn_implementation == "sdpa"


def test_eager_hook_capture_works_on_a_model_loaded_with_sdpa():
    model = tiny_neox(seed=9)
    ids = torch.randint(0, 500, (2, 21))
    with attention_implementation(model, "eager"):
        eager = capture(model, ids, attn_fn=lambda _l, attn, _c: head_pattern_sums(attn, 10))
    again = capture(model, ids, attn_fn=lambda _l, attn, _c: head_pattern_sums(attn, 10))
    assert model.config._attn_implementation == "sdpa"
    for a, b in zip(eager.attn, again.attn):
        torch.testing.assert_close(a, b)


def test_model_left_on_the_stats_implementation_behaves_like_sdpa():
    from ckptstudy.measure.attention_stats import register

    model = tiny_neox(seed=10)
    ids = torch.randint(0, 500, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: only plain SDPA (no statistics) may see a mask
    with torch.no_grad(), attention_implementation(model, "sdpa"):
        expected = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), attention_implementation(model, register()):
        assert model.config._attn_implementation == STATS_IMPLEMENTATION
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected)


def test_statistics_refuse_a_padded_pass():
    from ckptstudy.measure.attention_stats import StatsCollector, register

    model = tiny_neox(seed=11)
    ids = torch.randint(0, 500, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    collector = StatsCollector(2)
    collector.request = random_request(2, 12)
    token = collector.activate()
    try:
        with torch.no_grad(), attention_implementation(model, register()), pytest.raises(ValueError, match="padded"):
            model(input_ids=ids, attention_mask=mask)
    finally:
        StatsCollector.deactivate(token)


def test_single_token_rows_and_request_checks():
    model = tiny_neox(seed=12)
    request = StatsRequest(
        key_values=torch.ones(2, 1, 3, dtype=torch.double),
        query_weight=torch.ones(2, 1, dtype=torch.double),
        query_kind=torch.ones(2, 1, dtype=torch.long),
    )
    cap = capture_stats(model, torch.randint(0, 500, (2, 1)), request)
    torch.testing.assert_close(cap.attn[0]["mass"], torch.full((4, 3), 2.0, dtype=torch.double))
    assert float(cap.attn[0]["entropy"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="go together"):
        StatsRequest(key_values=torch.ones(1, 2, 1))
    with pytest.raises(ValueError, match="0 <= key <= query"):
        StatsRequest(diagonals={"bad": (torch.tensor([1]), torch.tensor([2]))})


def test_models_without_an_adapter_are_refused_naming_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match=r"no adapter for; supported .*gpt_neox.*llama.*olmo2.*gpt2"):
        model_parts(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("method", ["fused", "eager"])
def test_per_row_statistics_are_each_rows_own_and_sum_to_the_totals(method):
    stats = capture_stats if method == "fused" else eager_capture_stats
    model = tiny_neox(vocab_size=300, layers=2, d_model=32, heads=4, seed=13).double()
    n, s = 5, 23
    ids = torch.randint(0, 300, (n, s), generator=torch.Generator().manual_seed(14))
    request = random_request(n, s, repeat=10)
    per_row_request = StatsRequest(**{**request.__dict__, "per_row": True})
    nll = lambda logits, chunk: logits[:, :-1].log_softmax(-1).gather(-1, chunk[:, 1:, None])[..., 0].sum(0)  # noqa: E731
    rows = stats(model, ids, per_row_request, logits_fn=nll, batch_size=2)
    total = stats(model, ids, request, logits_fn=nll, batch_size=3)
    assert rows.logits.shape == (n, s - 1)
    torch.testing.assert_close(rows.logits.sum(0), total.logits)
    for layer in range(2):
        for key in KEYS:
            assert rows.attn[layer][key].shape[0] == n, key
            torch.testing.assert_close(rows.attn[layer][key].sum(0), total.attn[layer][key], msg=key)
    # row 3 on its own gives row 3's statistics: rows are not mixed across chunks
    alone = stats(model, ids[3:4], request.rows(3, 4, "cpu"), logits_fn=nll, batch_size=1)
    torch.testing.assert_close(rows.logits[3], alone.logits)
    for key in KEYS:
        torch.testing.assert_close(rows.attn[1][key][3], alone.attn[1][key], msg=key)
