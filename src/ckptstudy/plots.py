"""Matplotlib figures: layer x head heatmaps and metric trajectories over training steps.

Figures are built with the object API (`matplotlib.figure.Figure`), so nothing here selects a global
backend or keeps figures alive in pyplot's registry.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure

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


def trajectory_figure(table, metrics: list[str], onsets: dict[tuple[str, str], float] | None = None) -> Figure:
    """One panel per metric: value vs training step (symlog x), one line per model, onset marked."""
    onsets = onsets or {}
    metrics = [m for m in metrics if m in table.columns]
    cols = min(3, max(1, len(metrics)))
    rows = math.ceil(len(metrics) / cols) or 1
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for model, part in table.groupby("model"):
            part = part.sort_values("step")
            ax.plot(part["step"], part[metric], marker="o", markersize=3, label=model)
            onset = onsets.get((model, metric))
            if onset is not None and np.isfinite(onset):
                ax.axvline(onset, linestyle="--", linewidth=1, color="gray")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0, right=max(1.0, float(table["step"].max())) * 1.3)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("training step")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    if metrics:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path, dpi: int = 110) -> None:
    """Write the figure as a PNG atomically (readers never see half an image)."""
    atomic_write_bytes(path, png_bytes(fig, dpi))
