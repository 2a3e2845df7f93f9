"""Matplotlib figures: layer x head heatmaps, head x step heatmaps and metric trajectories over training
(with bootstrap bands and onset intervals).

Figures are built with the object API (`matplotlib.figure.Figure`), so nothing here selects a global
backend or keeps figures alive in pyplot's registry.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ckptstudy.results import atomic_write_bytes


def heatmap_figure(array: np.ndarray, title: str) -> Figure:
    """A layer x head heatmap (extra trailing axes are averaged)."""
    values = np.asarray(array, dtype=float)
    while values.ndim > 2:
        values = values.mean(axis=-1)
    values = values.reshape(values.shape[0], -1) if values.ndim == 2 else values.reshape(1, -1)
    fig = Figure(figsize=(1 + 0.45 * values.shape[1], 1 + 0.35 * values.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def _band(table, metric: str):
    """(low, high) columns of a metric's bootstrap interval in a trajectories table, or None."""
    low, high = f"{metric}/ci_low", f"{metric}/ci_high"
    if low in table.columns and high in table.columns:
        return table[low].astype(float).to_numpy(), table[high].astype(float).to_numpy()
    return None


def trajectory_figure(
    table,
    metrics: list[str],
    onsets: dict[tuple[str, str], float] | None = None,
    onset_ci: dict[tuple[str, str], dict] | None = None,
    axis: str = "step",
    tokens_per_step: dict[str, float] | None = None,
    columns: int = 3,
) -> Figure:
    """One panel per metric: value vs training step (or tokens seen, `axis="tokens"`: step x the model's
    `tokens_per_step`) on a symlog axis that shows step 0, one line per model, the bootstrap interval as a
    band (`<metric>/ci_low`, `<metric>/ci_high` columns), the onset as a dashed line and its interval as a
    shaded span."""
    onsets, onset_ci, tokens_per_step = onsets or {}, onset_ci or {}, tokens_per_step or {}
    metrics = [m for m in metrics if m in table.columns]
    cols = min(columns, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / cols) or 1
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = {model: f"C{i}" for i, model in enumerate(sorted(table["model"].unique()))}
    scale = {model: (float(tokens_per_step.get(model) or 1) if axis == "tokens" else 1.0) for model in colours}
    right = max([float(table.loc[table["model"] == m, "step"].max()) * scale[m] for m in colours] or [1.0])
    for ax, metric in zip(axes.flat, metrics):
        for model, part in table.groupby("model"):
            part = part.sort_values("step")
            x, colour = part["step"].to_numpy(dtype=float) * scale[model], colours[model]
            ax.plot(x, part[metric].astype(float), marker="o", markersize=3, label=model, color=colour)
            band = _band(part, metric)
            if band is not None and np.isfinite(band[0]).any():
                ax.fill_between(x, band[0], band[1], color=colour, alpha=0.2, linewidth=0)
            onset = onsets.get((model, metric))
            if onset is not None and np.isfinite(onset):
                ax.axvline(onset * scale[model], linestyle="--", linewidth=1, color=colour)
            low, high = (onset_ci.get((model, metric)) or {}).get("ci", [math.nan, math.nan])
            if np.isfinite(low) and np.isfinite(high):
                ax.axvspan(low * scale[model], high * scale[model], color=colour, alpha=0.08, linewidth=0)
        linthresh = min(scale.values()) if scale else 1.0
        _symlog_axis(ax, linthresh, max(linthresh, right) * 1.3)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("tokens seen" if axis == "tokens" else "training step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    if metrics:
        axes.flat[0].legend(fontsize=7)
    # fixed margins: tight_layout would draw every panel once more to measure it
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / fig.get_figheight(), top=1 - 0.35 / fig.get_figheight())
    fig.subplots_adjust(hspace=0.45, wspace=0.28)
    return fig


def _symlog_axis(ax, linthresh: float, right: float) -> None:
    """A symlog x axis from 0 (linear below `linthresh`) with ticks at 0 and the powers of ten only
    (symlog's own locators are slow and crowd small panels)."""
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(left=0, right=right)
    ticks = [0.0] + [10.0**e for e in range(math.ceil(math.log10(linthresh)), math.floor(math.log10(right)) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_power_label))
    ax.xaxis.set_minor_locator(NullLocator())


def _power_label(value: float, _pos=None) -> str:
    if value == 0:
        return "0"
    exponent = round(math.log10(value))
    return f"1e{exponent}" if exponent >= 4 else f"{value:g}"


def head_step_figure(steps: list[int], arrays: list[np.ndarray], title: str, onset: float | None = None) -> Figure:
    """A head x step heatmap: one row per head (layer-major: L0.H0, L0.H1, ...), one column per checkpoint,
    so a reader sees which heads form and when; the onset (if any) marked between its checkpoints.
    arrays: one layer x head array per step (extra trailing axes are averaged)."""
    grids = []
    for array in arrays:
        values = np.asarray(array, dtype=float)
        while values.ndim > 2:
            values = values.mean(axis=-1)
        grids.append(values.reshape(values.shape[0], -1))
    layers, heads = grids[0].shape
    image = np.stack([g.ravel() for g in grids], axis=1)  # [layer * head, steps]
    fig = Figure(figsize=(min(14.0, 2.5 + 0.32 * len(steps)), min(12.0, 1.6 + 0.16 * image.shape[0])))
    ax = fig.subplots()
    shown = ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
    ticks = [layer * heads for layer in range(layers)]
    if layers * heads <= 48:
        ax.set_yticks(range(layers * heads), [f"L{i // heads}.H{i % heads}" for i in range(layers * heads)], fontsize=6)
    else:
        ax.set_yticks(ticks, [f"L{layer}" for layer in range(layers)], fontsize=7)
    for tick in ticks[1:]:
        ax.axhline(tick - 0.5, color="white", linewidth=0.6)
    if onset is not None and np.isfinite(onset) and len(steps) > 1:
        x = np.interp(np.log1p(onset), np.log1p(np.asarray(steps, dtype=float)), np.arange(len(steps)))
        ax.axvline(x, color="red", linestyle="--", linewidth=1.2, label=f"onset ~{onset:.0f}")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("training step")
    ax.set_ylabel("head (layer.head)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax)
    fig.tight_layout()
    return fig


def head_snapshots_figure(panels: list[tuple[str, np.ndarray]], title: str) -> Figure:
    """Layer x head heatmaps side by side (e.g. first, onset and last checkpoint) on one colour scale."""
    grids = []
    for _, array in panels:
        values = np.asarray(array, dtype=float)
        while values.ndim > 2:
            values = values.mean(axis=-1)
        grids.append(values.reshape(values.shape[0], -1))
    finite = np.concatenate([g[np.isfinite(g)] for g in grids]) if grids else np.zeros(1)
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    layers, heads = grids[0].shape
    fig = Figure(figsize=(1.2 + len(grids) * (0.8 + 0.4 * heads), 1.4 + 0.3 * layers), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    shown = None
    for ax, (label, _), grid in zip(axes, panels, grids):
        shown = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xticks(range(heads) if heads <= 16 else range(0, heads, 4))
        ax.set_yticks(range(layers) if layers <= 16 else range(0, layers, 4))
        ax.set_xlabel("head", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    if shown is not None:
        fig.colorbar(shown, ax=list(axes))
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path, dpi: int = 110) -> None:
    """Write the figure as a PNG atomically (readers never see half an image)."""
    atomic_write_bytes(path, png_bytes(fig, dpi))


def claim_figure(part, panels: list[tuple[str, list[str], dict, list[int]]]) -> Figure:
    """A small figure of one claim on one model: per test (`panels`: title, metrics, marks, steps read) its
    metrics over training on a symlog step axis with their interval bands (`part`: the model's ok rows of the
    trajectories table), the checkpoints the test read as larger dots, and its marks: thresholds (`above`,
    `below`: dotted lines), trend windows (`early`, `late`: shaded) and onsets (`onsets`: {metric: [onset, low,
    high]}, dashed with the interval shaded)."""
    fig = Figure(figsize=(3.2 * len(panels), 1.9))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    part = part.sort_values("step")
    x = part["step"].to_numpy(dtype=float)
    right = max(float(x.max()) if len(x) else 1.0, 1.0) * 1.3
    for ax, (title, metrics, marks, used) in zip(axes, panels):
        drawn = [m for m in metrics if m in part.columns]
        for i, metric in enumerate(drawn):
            y, colour = part[metric].astype(float).to_numpy(), f"C{i}"
            ax.plot(x, y, marker="o", markersize=2, linewidth=1, color=colour, label=metric)
            band = _band(part, metric)
            if band is not None and np.isfinite(band[0]).any():
                ax.fill_between(x, band[0], band[1], color=colour, alpha=0.2, linewidth=0)
            read = np.isin(x, np.asarray(used, dtype=float))
            ax.plot(x[read], y[read], "o", markersize=4, color=colour)
            onset = (marks.get("onsets") or {}).get(metric)
            if onset and np.isfinite(onset[0]):
                ax.axvline(onset[0], linestyle="--", linewidth=1, color=colour)
                if np.isfinite(onset[1]) and np.isfinite(onset[2]):
                    ax.axvspan(onset[1], onset[2], color=colour, alpha=0.1, linewidth=0)
        for name in ("above", "below"):
            if marks.get(name) is not None:
                ax.axhline(marks[name], linestyle=":", linewidth=1.2, color="black")
        for name in ("early", "late"):
            if marks.get(name):
                ax.axvspan(marks[name][0], marks[name][1], color="grey", alpha=0.15, linewidth=0)
        empty = "not in the records" if not drawn else ""
        if drawn and not np.isfinite(part[drawn].astype(float).to_numpy()).any():
            empty = "NaN at every checkpoint"
        if empty:
            ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=8, transform=ax.transAxes)
        _symlog_axis(ax, 1.0, right)
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        if len(drawn) > 1:
            ax.legend(fontsize=5, loc="best")
    fig.subplots_adjust(left=0.1 / len(panels), right=0.98, bottom=0.17, top=0.86, wspace=0.3)
    return fig
