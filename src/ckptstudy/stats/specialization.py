"""How concentrated a per-head effect vector is, and how two head sets compare.

An effect vector e (one value per head, any shape) is clipped at 0 and normalised, p = e+ / sum(e+).
"""

from __future__ import annotations

import math

import torch


def shares(effects: torch.Tensor) -> torch.Tensor:
    """p = max(e, 0) / sum(max(e, 0)), flattened; all-NaN when no head has a positive effect."""
    clipped = effects.flatten().double().clamp(min=0)
    total = clipped.sum()
    return clipped / total if total > 0 else torch.full_like(clipped, math.nan)


def top_share(effects: torch.Tensor, k: int) -> float:
    """Share of the total positive effect held by the k strongest heads."""
    p = shares(effects)
    return float(p.topk(min(k, p.numel())).values.sum())


def effective_heads(effects: torch.Tensor) -> float:
    """exp(entropy of p): 1 when one head carries everything, n when all carry the same."""
    p = shares(effects)
    if torch.isnan(p).any():
        return math.nan
    nz = p[p > 0]
    return float(torch.exp(-(nz * nz.log()).sum()))


def gini(effects: torch.Tensor) -> float:
    """Gini coefficient of the clipped effects: 0 = equal, (n-1)/n = one head has it all."""
    x = effects.flatten().double().clamp(min=0).sort().values
    n, total = x.numel(), x.sum()
    if total <= 0:
        return math.nan
    index = torch.arange(1, n + 1, dtype=torch.double)
    return float(((2 * index - n - 1) * x).sum() / (n * total))


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
