"""Pictures for notebooks: retrieval grids (hits marked), captioned images and training curves.

Functions return the matplotlib Figure (and never call ``plt.show``) so notebooks display
them and scripts can save them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
from PIL import Image

HIT_COLOUR = "#2ca02c"
MISS_COLOUR = "#d62728"


def _show_image(ax, path: Path, title: str = "", border: Optional[str] = None) -> None:
    with Image.open(path) as image:
        ax.imshow(image.convert("RGB"))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    if border is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor(border)
            spine.set_linewidth(3)


def retrieval_grid(
    queries: Sequence[str],
    ranked_paths: Sequence[Sequence[Path]],
    relevant: Optional[Sequence[set[Path]]] = None,
    query_images: Optional[Sequence[Optional[Path]]] = None,
    k: int = 5,
    wrap: int = 28,
):
    """One row per query: (optional query image) + the top-``k`` results, green = hit, red = miss.

    Args:
        queries: query texts, one per row.
        ranked_paths: per query, retrieved image paths best first.
        relevant: per query, the set of relevant image paths (borders marked when given).
        query_images: per query, a reference image shown first (composed retrieval) or None.
    """
    with_query_image = query_images is not None
    cols = k + 1 if with_query_image else k
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.7 * cols + 2.2, 1.9 * len(queries)), squeeze=False)
    for row, query in enumerate(queries):
        label = textwrap.fill(query, wrap)
        offset = 0
        if with_query_image:
            ref = query_images[row]
            if ref is not None:
                _show_image(axes[row][0], ref, "reference", border="#1f77b4")
            else:
                axes[row][0].axis("off")
            offset = 1
        axes[row][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=8)
        for col in range(k):
            ax = axes[row][col + offset]
            if col >= len(ranked_paths[row]):
                ax.axis("off")
                continue
            path = ranked_paths[row][col]
            border = None
            if relevant is not None:
                border = HIT_COLOUR if path in relevant[row] else MISS_COLOUR
            _show_image(ax, path, f"#{col + 1}", border=border)
    fig.tight_layout()
    return fig


def curve_panels(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
                 xlabels: Optional[Mapping[str, str]] = None):
    """One panel per title, each a line plot of named ``(x, value)`` series (x label: ``xlabels[title]``,
    default "step"); series of under 20 points are drawn with markers, so one epoch still shows."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for name, points in series.items():
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="o" if len(points) < 20 else None)
        ax.set_xlabel((xlabels or {}).get(title, "step"))
        ax.set_ylabel("value")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(series: Mapping[str, Sequence[tuple[int, float]]], title: str = "training loss"):
    """Line plot of named ``(step, value)`` series (e.g. read from TensorBoard event files)."""
    return curve_panels({title: series})


def captioned_images(paths: Sequence[Path], captions: Sequence[str], ncols: int = 4, wrap: int = 34):
    """Grid of images, each above its caption (every line wrapped at ``wrap`` characters)."""
    nrows = max(1, -(-len(paths) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.9 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(paths):
            ax.axis("off")
            continue
        _show_image(ax, paths[i])
        ax.set_xlabel("\n".join(textwrap.fill(line, wrap) for line in captions[i].splitlines()), fontsize=7)
    fig.tight_layout()
    return fig


def read_scalars(tensorboard_dir: Path | str, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one scalar tag from a TensorBoard folder (empty if absent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags().get("scalars", []):
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
