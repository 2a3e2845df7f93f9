"""How concentrated a per-head effect vector is, and how two head sets compare.

An effect vector e (one value per head, any shape) is clipped at 0 and normalised, p = e+ / sum(e+). The
concentration formulas exist here only, vectorised over rows (`concentration`): the bootstrap evaluates them on
every resample, and a family's reported value is their bootstrap statistic on the full sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch

CONCENTRATIONS = ("positive_total", "top_share", "neff", "gini")


def concentration(
    vectors: np.ndarray, function: str, k: int | None = None, threshold: float | None = None
) -> np.ndarray:
    """`function` of each row of effect vectors [R, heads] (float64): `positive_total` = sum(e+); on the shares
    p = e+ / sum(e+): `top_share` = share held by the k strongest heads, `neff` = exp(entropy of p) (1 when one
    head carries everything, n when all carry the same), `gini` = Gini coefficient of e+ (0 = equal, (n-1)/n =
    one head has it all). The shares' statistics are NaN where the positive total is not finite, not positive,
    or below `threshold` (noise has no distribution over heads): [R]."""
    clipped = np.clip(vectors, 0.0, None)
    total = clipped.sum(1)
    if function == "positive_total":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        p = clipped / total[:, None]
        if function == "top_share":
            out = -np.sort(-p, axis=1)[:, : min(k, p.shape[1])].sum(1)
        elif function == "neff":
            out = np.exp(-np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1))
        elif function == "gini":
            n = p.shape[1]
            index = np.arange(1, n + 1)
            out = ((2 * index - n - 1) * np.sort(clipped, axis=1)).sum(1) / (n * total)
        else:
            raise ValueError(f"unknown concentration {function!r}; valid: {', '.join(CONCENTRATIONS)}")
    undefined = ~np.isfinite(total) | (total <= 0) | (total < (threshold or 0.0))
    return np.where(undefined, np.nan, out)


def concentration_of(effects, function: str, k: int | None = None) -> float:
    """`concentration` of one effect vector (a tensor or an array of any shape, flattened)."""
    flat = np.asarray(effects, dtype=np.float64).reshape(1, -1)
    return float(concentration(flat, function, k)[0])


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    x = values.flatten().double()
    order = x.argsort()
    r = torch.empty_like(x)
    r[order] = torch.arange(1, x.numel() + 1, dtype=torch.double)
    for value in x.unique():
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally shaped vectors (NaN values dropped pairwise)."""
    a, b = a.flatten().double(), b.flatten().double()
    ok = ~(torch.isnan(a) | torch.isnan(b))
    return pearson(ranks(a[ok]), ranks(b[ok])) if ok.sum() > 2 else math.nan


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """`ranks` of every row of a finite array [R, n] at once (ties given their average rank)."""
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    position = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    new = np.ones(rows.shape, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # a tie group starts here
    last = np.ones(rows.shape, dtype=bool)
    last[:, :-1] = new[:, 1:]
    start = np.maximum.accumulate(np.where(new, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, position, rows.shape[1])[:, ::-1], axis=1)[:, ::-1]
    out = np.empty(rows.shape)
    np.put_along_axis(out, order, (start + end) / 2 + 1, axis=1)
    return out


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`spearman` of each pair of finite rows of a, b [R, n] at once: [R] (NaN where a row's ranks are
    constant or n < 3)."""
    if a.shape[1] < 3:
        return np.full(len(a), np.nan)
    x, y = average_ranks(a), average_ranks(b)
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    denom = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (x * y).sum(1) / denom, np.nan)


def top_heads(effects: torch.Tensor, k: int) -> set[int]:
    """Flat indices of the k largest effects."""
    flat = effects.flatten().nan_to_num(nan=-math.inf)
    return set(flat.topk(min(k, flat.numel())).indices.tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else math.nan


def jaccard_chance(n: int, k: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random k-subsets of n items (k clipped to n).

    The overlap i is hypergeometric, P(i) = C(k, i) C(n - k, k - i) / C(n, k), and the Jaccard of two
    k-sets overlapping in i items is i / (2k - i). Two top-k head sets are compared against this: with
    n = 8 heads and k = 5 any two sets share >= 2 heads (Jaccard >= 0.25) and random sets average ~0.47.
    """
    if n < 1 or k < 1:
        raise ValueError(f"jaccard_chance needs n >= 1 and k >= 1, got n={n}, k={k}")
    k = min(k, n)
    total = math.comb(n, k)
    return sum(
        math.comb(k, i) * math.comb(n - k, k - i) / total * i / (2 * k - i) for i in range(max(1, 2 * k - n), k + 1)
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    denom = a.norm() * b.norm()
    return float((a * b).sum() / denom) if denom > 0 else math.nan
