"""Figures written next to a run's metrics (PNG). Figures are matplotlib `Figure` objects
drawn by their own Agg canvas: importing this module and drawing leave pyplot's backend and
state (a notebook's inline figures) untouched."""
from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def _subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True):
    """(figure, axes) like pyplot.subplots, without pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _show(ax, img):
    img = np.asarray(img, np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo + 1e-8)                  # per-image contrast stretch
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    ax.set_xticks([]), ax.set_yticks([])


def image_rows(path: str, rows: dict, title: str = "", n: int = 8) -> str:
    """One row per named image batch (e.g. original / x_u / x_r, the GRFD paper's Fig. 3).

    Each image is contrast-stretched on its own, since x_r is not in [0, 1].
    """
    n = min(n, *(len(v) for v in rows.values()))
    fig, axes = _subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(n):
            _show(axes[r, c], imgs[c])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    return _save(fig, path)


def pca_2d(z: np.ndarray) -> np.ndarray:
    """Project rows of z onto their first two principal components."""
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    return z @ vt[:2].T


def latent_scatter(path: str, z: np.ndarray, labels: np.ndarray, title: str = "") -> str:
    """2-D PCA of latent codes coloured by class (the GRFD paper's Fig. 2)."""
    p = pca_2d(np.asarray(z, np.float64))
    fig, ax = _subplots(figsize=(5, 5))
    sc = ax.scatter(p[:, 0], p[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "nipy_spectral",
                    s=6, alpha=0.8)
    if labels.max() < 10:
        ax.legend(*sc.legend_elements(), loc="best", fontsize=7, title="class")
    ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2"), ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    """Save a figure (main process only); returns path."""
    from jaxdefense.sharding import is_main_process
    fig.tight_layout()
    if is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
    return path


def line_plot(path: str, x, lines: dict, xlabel: str, ylabel: str, title: str = "",
              marker: str | None = None) -> str:
    """One line per entry of `lines` ({label: y values}) against x; y axis [0, 1]."""
    fig, ax = _subplots(figsize=(5, 3.5))
    for name, ys in lines.items():
        ax.plot(x, ys, marker=marker, label=name)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_ylim(0, 1)
    ax.grid(alpha=0.3), ax.legend(), ax.set_title(title)
    return _save(fig, path)


def accuracy_vs_eps(path: str, sweep: dict, title: str = "") -> str:
    """Accuracy against eps (in /255) for each series of `sweep` ({'eps': [...], name: [...]}).
    Names 'GROUP/attack' share a colour per group (threat model) and a line style per attack
    (PGD solid, FGSM dashed), so the protocols sit side by side on one axis."""
    eps = np.asarray(sweep["eps"]) * 255
    names = [k for k in sweep if k != "eps"]
    groups = list(dict.fromkeys(n.split("/")[0] for n in names if "/" in n))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"pgd": "-", "fgsm": "--"}
    fig, ax = _subplots(figsize=(6, 4))
    for n in names:
        group, _, attack = n.partition("/")
        style = dict(color=colours[groups.index(group) % len(colours)],
                     linestyle=styles.get(attack, ":")) if attack else {}
        ax.plot(eps, sweep[n], marker="o", markersize=3, label=n.replace("/", ", "), **style)
    ax.set_xlabel("eps (/255)"), ax.set_ylabel("accuracy"), ax.set_ylim(0, 1)
    ax.grid(alpha=0.3), ax.legend(fontsize=7), ax.set_title(title)
    return _save(fig, path)


def grouped_bars(path: str, groups: list, series: dict, ylabel: str, title: str = "") -> str:
    """Bars per group (x axis) for each series ({label: [value or None per group]});
    None (not measured) leaves a gap, labelled 'n/a'."""
    fig, ax = _subplots(figsize=(max(6, 1.1 * len(groups)), 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.bar([x for x, v in zip(xs, values) if v is not None],
               [v for v in values if v is not None], width, label=name)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel), ax.set_ylim(0, 1), ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8), ax.set_title(title)
    return _save(fig, path)
