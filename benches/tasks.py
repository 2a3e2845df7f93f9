"""The measured tasks, one per worker process (`worker.py`). Each returns a JSON-able dict.

- capture: everything the icl/ and lowinfo/ families read from attention, by one method
- ablation: per-head effects by one method (ckptstudy exact / attribution, TransformerLens hook loop)
- generation: greedy continuations by one method (the previous hand-written loop, greedy_generate)
- job: one whole checkpoint job (ckptstudy's families, or the TransformerLens script in tl_job.py)
- flops: this machine's matmul rate (stored for `ckptstudy-plan`)
"""

from __future__ import annotations

import statistics
import time

import torch
from common import REPO, boot_bridge, build_model, rss_mb, timed, tokenizer

N_CLASSES = 9  # 8 token classes + LOW_INFO, as in lowinfo/


def capture_request(batch: int, length: int, seed: int = 0):
    """Everything icl/ and lowinfo/ read from attention on `batch` x `length` tokens: the induction /
    duplicate / previous-token diagonals of a BOS + R + R layout, class mass on 9 key classes (8 one-hot +
    an overlapping LOW_INFO) over queries from position 32 on, row entropy of two query kinds; each with
    and without the sink."""
    from ckptstudy.measure.attention_stats import StatsRequest
    from ckptstudy.metrics.icl_heads import repeat_pattern_positions

    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, N_CLASSES - 1, (batch, length), generator=gen)
    onehot = torch.nn.functional.one_hot(classes, N_CLASSES - 1).double()
    low = (torch.rand(batch, length, generator=gen) < 0.3).double()[..., None]
    weight = torch.zeros(batch, length, dtype=torch.double)
    weight[:, min(32, length - 1) :] = 1
    kind = torch.randint(0, 3, (batch, length), generator=gen) * (weight > 0)
    return StatsRequest(
        diagonals=repeat_pattern_positions((length - 1) // 2),
        key_values=torch.cat([onehot, low], -1),
        query_weight=weight,
        query_kind=kind,
    )


def _nll(logits, ids):
    from ckptstudy.metrics.icl_heads import next_token_nll

    return next_token_nll(logits, ids)


def _summary(per_layer: list[dict]) -> dict:
    """Layer-summed statistics as lists (for checking that methods agree)."""
    return {k: torch.stack([layer[k] for layer in per_layer]).double().tolist() for k in per_layer[0]}


def capture(model: str, length: int, batch: int, method: str, repeat: int = 3, warmup: int = 1) -> dict:
    """One capture method on random tokens: bare (sdpa forward, no statistics: the floor), bare_body (the
    same without the unembedding: the floor of attention-only statistics), hf
    (output_attentions=True), tl (TransformerLens run_with_cache of every hook_pattern), fused / fused_nll
    (ckptstudy capture_stats without / with the per-token NLL of the icl pass), eager_hooks (capture_stats
    method="eager": eager weights reduced inside per-layer hooks, today's path before the fused one)."""
    from ckptstudy.measure.attention_stats import reference_statistics
    from ckptstudy.measure.capture import capture_stats
    from ckptstudy.reference import eager_capture_stats

    torch.set_grad_enabled(False)
    net = build_model(model, attn="sdpa" if method in ("bare", "bare_body") else "eager")
    ids = torch.randint(2, net.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    request = capture_request(batch, length)
    if method == "bare":

        def run():
            return net(input_ids=ids).logits.shape

    elif method == "bare_body":  # no unembedding: the floor of statistics that need no logits

        def run():
            return net.gpt_neox(input_ids=ids).last_hidden_state.shape

    elif method == "hf":

        def run():
            attentions = net(input_ids=ids, output_attentions=True).attentions
            return [reference_statistics(a, request, torch.float32) for a in attentions]

    elif method == "tl":
        bridge = boot_bridge(net, tokenizer(), model)

        def run():
            _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("attn.hook_pattern"))
            names = [f"blocks.{i}.attn.hook_pattern" for i in range(net.config.num_hidden_layers)]
            return [reference_statistics(cache[name], request, torch.float32) for name in names]

    elif method in ("fused", "fused_nll", "eager_hooks"):
        stats = eager_capture_stats if method == "eager_hooks" else capture_stats

        def run():
            return stats(net, ids, request, logits_fn=_nll if method == "fused_nll" else None, batch_size=batch).attn

    else:
        raise ValueError(f"unknown capture method {method!r}")
    before = rss_mb()
    seconds, times, out = timed(run, repeat=repeat, warmup=warmup)
    result = {"model": model, "length": length, "batch": batch, "method": method, "seconds": seconds, "times": times}
    result["rss_before_mb"] = round(before, 1)
    if method not in ("bare", "bare_body"):
        result["stats"] = _summary(out)
    return result


def flops(size: int = 1024, repeat: int = 5) -> dict:
    """Sustained float32 matmul rate (GFLOP/s) of this machine at the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds, _, _ = timed(lambda: a @ b, repeat=repeat, warmup=2)
    return {"gflops": round(2 * size**3 / seconds / 1e9, 2), "size": size}


def ablation_targets(vocab: int, prompts: int, length: int, copies: int = 4):
    """icl/'s targets on a passage of `length` random tokens repeated `copies` times (queries from copy 2 on)."""
    from ckptstudy.metrics.icl_heads import icl_targets

    passages = torch.randint(2, vocab, (prompts, length), generator=torch.Generator().manual_seed(0))
    return icl_targets(passages.repeat(1, copies), length)


def ablation(model: str, method: str, prompts: int, length: int, repeat: int = 1) -> dict:
    """Per-head zero-ablation effects by one method: exact (ckptstudy batched, reuses the clean residual),
    naive (ckptstudy's reference loop, one HF forward per head), attribution (1 forward + 1 backward),
    tl_loop (TransformerLens: one run_with_hooks per head zeroing its hook_z)."""
    from ckptstudy.measure.ablation import attribution_effects, exact_effects
    from ckptstudy.reference import naive_effects

    net = build_model(model)
    targets = ablation_targets(net.config.vocab_size, prompts, length)
    if method == "exact":
        fn = lambda: exact_effects(net, targets)  # noqa: E731
    elif method == "naive":
        fn = lambda: naive_effects(net, targets)  # noqa: E731
    elif method == "attribution":
        fn = lambda: attribution_effects(net, targets)  # noqa: E731
    elif method == "tl_loop":
        from tl_job import head_effects

        bridge = boot_bridge(net, tokenizer(), model)
        fn = lambda: head_effects(bridge, targets)  # noqa: E731
    else:
        raise ValueError(f"unknown ablation method {method!r}")
    seconds, times, effects = timed(fn, repeat=repeat)
    return {
        "model": model,
        "method": method,
        "probe": f"{prompts} prompts x {targets.ids.shape[1]} tokens",
        "seconds": seconds,
        "times": times,
        "effects": effects.tolist(),
    }


MICRO_FINAL = "micro-final"  # the micro suite's last checkpoint, as `generation` names it


def micro_final_batch():
    """The micro suite's last checkpoint and the natural-loop batch a default job generates on it: (model,
    prompts, new_tokens, pad_id, batch_size) from the default config's probes, `loops.new_tokens` (clipped
    to the context) and `batch_size` (all prompts in one call when null). The suite is read from outputs/suite
    (never built here)."""
    from ckptstudy.config import compose_config
    from ckptstudy.model.checkpoints import CheckpointSource, load_checkpoint
    from ckptstudy.model.suite import is_built, spec_from_config, suite_dir
    from ckptstudy.probes import cached_probes

    cfg = compose_config([f"paths.root={REPO / 'outputs'}", "logger=none"])
    directory = suite_dir(cfg.model)
    if not is_built(spec_from_config(cfg.model), directory):
        raise FileNotFoundError(f"the micro suite is not built under {directory}: run `make suite` first")
    step = max(int(p.name[4:]) for p in directory.glob("step*"))
    net, tok = load_checkpoint(CheckpointSource("micro", step, "local", str(directory / f"step{step}")))
    natural = cached_probes(cfg.probes, tok, REPO / "outputs" / "bench" / "probes").natural
    tokens = min(cfg.loops.new_tokens, net.config.max_position_embeddings - natural.shape[1])
    # batch_size null = the memory budget's rows per call: the micro model's 64 prompts fit in one call
    return net, natural.tolist(), tokens, tok.pad_token_id or 0, cfg.batch_size or len(natural)


def generation(model: str, prompts: int = 16, new_tokens: int = 64, pairs: int = 4, first: str = "loop") -> dict:
    """Greedy continuations of one batch by both methods, in pairs in this one process: loop (the hand-written
    loop ckptstudy used before, reference_greedy.py) and generate (ckptstudy `greedy_generate`: `model.generate`
    with the entropy logits processor). The two calls of a pair run back to back, so both see the same load on
    a shared machine; the pair order alternates, starting with `first`, after one untimed call of each.
    `model` is a random-init shape (`prompts` random prompts of 24..32 tokens left-padded in one batch,
    `new_tokens` each) or "micro-final" (`micro_final_batch`: 64 natural prompts x 96 tokens, batches of 16).
    Wall and process CPU time of every timed call; ids and entropies of each method's last call."""
    from reference_greedy import loop_greedy

    from ckptstudy.measure.generation import greedy_generate

    torch.set_grad_enabled(False)
    if model == MICRO_FINAL:
        net, lists, new_tokens, pad_id, batch_size = micro_final_batch()
    else:
        net = build_model(model)
        gen = torch.Generator().manual_seed(1)
        lists = [torch.randint(2, net.config.vocab_size, (24 + i % 9,), generator=gen).tolist() for i in range(prompts)]
        pad_id, batch_size = 1, prompts
    methods = {
        "loop": lambda: loop_greedy(net, lists, new_tokens, pad_id=pad_id, batch_size=batch_size),
        "generate": lambda: greedy_generate(net, lists, new_tokens, pad_id=pad_id, batch_size=batch_size, desc=None),
    }
    if first not in methods:
        raise ValueError(f"unknown generation method {first!r} (loop, generate)")
    order = [first, *(m for m in methods if m != first)]
    out = {name: fn() for name, fn in methods.items()}  # untimed: first-call costs
    wall: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(pairs):
        for name in order if i % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            out[name] = methods[name]()
            wall[name].append(round(time.perf_counter() - start, 4))
            cpu[name].append(round(time.process_time() - start_cpu, 4))  # leaves out time spent descheduled
    return {
        "model": model,
        "first": first,
        "prompts": len(lists),
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "seconds": statistics.median(wall["loop"] + wall["generate"]),
        "wall": wall,
        "cpu": cpu,
        "ids": {name: g.ids.tolist() for name, g in out.items()},
        "entropy": {name: g.entropy.tolist() for name, g in out.items()},
    }


JOB_METRICS = ("icl_heads", "repetition", "low_info")


def job_context(model: str, overrides: list[str], attn: str = "eager"):
    """(config, JobContext) of one bench job: the model shape, the bench tokenizer, the configured probes."""
    from ckptstudy.config import compose_config
    from ckptstudy.metrics import JobContext
    from ckptstudy.probes import cached_probes

    root = REPO / "outputs" / "bench" / "root"
    cfg = compose_config([f"paths.root={root}", "logger=none", *overrides])
    tok = tokenizer()
    probes = cached_probes(cfg.probes, tok, REPO / "outputs" / "bench" / "probes")
    return cfg, JobContext.from_config(cfg, build_model(model, attn=attn), tok, probes)


def job(model: str, engine: str, overrides: list[str], attn: str = "eager") -> dict:
    """One checkpoint job on a random-init model: engine = ckptstudy (its families, as `ckptstudy` runs
    them) or tl (tl_job.py). Model build and probes are not timed (the same for both)."""
    from omegaconf import OmegaConf

    from ckptstudy.params import check_family

    torch.manual_seed(0)
    cfg, ctx = job_context(model, overrides, attn)
    metrics = OmegaConf.to_container(cfg.metrics, resolve=True)
    before = rss_mb()
    seconds, scalars = {}, {}
    start = time.perf_counter()
    if engine == "ckptstudy":
        t = time.perf_counter()
        ctx.natural_loops()
        seconds["natural_generation"] = time.perf_counter() - t
        for name, params in metrics.items():
            fn, params = check_family(name, params)
            t = time.perf_counter()
            result = fn(ctx, **params)
            seconds[name] = time.perf_counter() - t
            scalars.update(result.scalars)
    elif engine == "tl":
        import tl_job

        bridge = boot_bridge(ctx.model, ctx.tokenizer, model)
        start = time.perf_counter()  # the bridge boot is not counted
        scalars, seconds = tl_job.run(bridge, ctx, metrics)
    else:
        raise ValueError(f"unknown job engine {engine!r}")
    total = time.perf_counter() - start
    return {
        "model": model,
        "engine": engine,
        "families": list(metrics),
        "seconds": total,
        "parts": {k: round(v, 2) for k, v in seconds.items()},
        "scalars": {k: (None if v != v else v) for k, v in scalars.items()},
        "rss_before_mb": round(before, 1),
    }


def machine() -> dict:
    """This machine as `ckptstudy-plan` sees it (matmul rate, bandwidth, per-layer call overhead)."""
    from dataclasses import asdict

    from ckptstudy.tools.machine import FORWARD_EFFICIENCY, cpu_name, measure_machine

    measured = measure_machine()
    matmul = round(measured.gflops / FORWARD_EFFICIENCY, 1)
    return {"machine": asdict(measured), "cpu": cpu_name(), "matmul_gflops": matmul}


TASKS = {
    "capture": capture,
    "ablation": ablation,
    "generation": generation,
    "job": job,
    "flops": flops,
    "machine": machine,
}
