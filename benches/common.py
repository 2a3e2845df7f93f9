"""Shared pieces of the benchmarks: model shapes, a tokenizer, timing and measured memory.

Every measured method runs in its own fresh process (`worker.py`), so each peak RSS belongs to one method.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

import torch

from ckptstudy.tools.machine import cpu_name

# name -> (layers, d_model, heads, vocab); "micro" = the embedded micro suite's shape
SHAPES = {
    "micro": (2, 128, 4, 2048),
    "pythia-14m": (6, 128, 4, 50304),
    "pythia-70m": (6, 512, 8, 50304),
    "pythia-160m": (12, 768, 12, 50304),
}
REPO = Path(__file__).resolve().parents[1]


def build_model(name: str, attn: str = "eager", seed: int = 0, context: int | None = None):
    """A random-init model of a Pythia size, built like every model here (`ckptstudy.model.neox`), eval mode, with
    attention implementation `attn` ("eager" = how `load_checkpoint` loads checkpoints today, "sdpa" =
    the transformers default)."""
    from ckptstudy.model.neox import make_neox

    layers, d, heads, vocab = SHAPES[name]
    context = context or (128 if name == "micro" else 2048)  # micro: the suite's training length
    model = make_neox(vocab, d, layers, heads, max_position_embeddings=context, seed=seed).eval()
    model.config._attn_implementation = attn
    return model


def tokenizer(cache: Path | None = None):
    """A byte-level BPE tokenizer (vocab 2048, Pythia's conventions) trained on standard-library sources,
    saved once under outputs/bench/tokenizer and loaded from there by every worker."""
    from transformers import AutoTokenizer

    cache = cache or REPO / "outputs" / "bench" / "tokenizer"
    if not (cache / "tokenizer.json").exists():
        from ckptstudy.model.suite import train_tokenizer

        texts = [p.read_text(errors="replace") for p in sorted(Path(os.__file__).parent.glob("[a-f]*.py"))]
        cache.mkdir(parents=True, exist_ok=True)
        train_tokenizer(texts, 2048).save_pretrained(cache)
    return AutoTokenizer.from_pretrained(cache)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB, from getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size (MB, from /proc/self/statm)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def timed(fn, repeat: int = 3, warmup: int = 0) -> tuple[float, list[float], object]:
    """Median wall time of `repeat` calls after `warmup` untimed ones, every time, and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 3) for t in times], out


def transformer_lens_missing() -> str | None:
    """Why TransformerLens rows are skipped, or None when it is importable."""
    try:
        import transformer_lens  # noqa: F401
    except ImportError as err:
        return f"transformer_lens is not importable ({err}); install the bench extra: pip install -e '.[bench]'"
    return None


def boot_bridge(model, tok, name: str):
    """TransformerLens 4.x bridge around the same HF model (offline: config and tokenizer from a local dir).
    The bridge forces eager attention (hooks see scores and patterns); logits equal HF's."""
    from transformer_lens.model_bridge import TransformerBridge

    local = REPO / "outputs" / "bench" / "hf" / name
    local.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(local)
    tok.save_pretrained(local)
    bridge = TransformerBridge.boot_transformers(str(local), hf_model=model, tokenizer=tok)
    bridge.eval()
    return bridge


def versions() -> dict:
    import platform

    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        from importlib.metadata import version

        out["transformer_lens"] = version("transformer-lens")
    except Exception:
        out["transformer_lens"] = None
    return out
