"""The run report's figures, drawn with matplotlib and returned as PNG data URIs (no file, no network).

matplotlib's object API (Figure, not pyplot) keeps no global state and needs no display.
Per-class figures switch to a compact form when there are too many classes to label.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

MAX_BARS = 40  # classes a bar chart labels one by one; above this, a sorted or scatter view
MAX_MATRIX = 20  # rows and columns of a drawn matrix
ZERO_SHOT, ADAPTED = "#8c8c8c", "#1f6fb4"  # grey before, blue after, in every figure
LOSSES = ("loss", "loss_cls", "loss_fair", "loss_mim", "loss_align")
SIGNALS = ("kept", "balance", "agree")


def data_uri(fig: Figure) -> str:
    """The figure as an embeddable ``data:image/png;base64,...`` string."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 9.0, height: float = 3.4) -> Figure:
    fig = Figure(figsize=(width, height))
    fig.set_layout_engine("constrained")
    return fig


def curves(metrics: Sequence[dict]) -> str:
    """Per epoch: every loss term; kept, balance, agree; learning rate; and accuracies when measured."""
    rows = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval" in m]
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 4 if evals else 3)
    epochs = [m["epoch"] for m in rows]
    for key in LOSSES:
        if any(m.get(key) for m in rows):
            axes[0].plot(epochs, [m[key] for m in rows], marker="o", label=key)
    for key in SIGNALS:
        axes[1].plot(epochs, [m[key] for m in rows], marker="o", label=key)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].plot(epochs, [m["lr"] for m in rows], marker="o", color="black")
    axes[2].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}"))
    for ax, title in zip(axes, ("losses (lower is better)", "share of images", "learning rate", "accuracy (labeled folder)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if evals:
        for name, color in (("zero_shot", ZERO_SHOT), ("teacher", ADAPTED), ("student", "#e07b00")):
            pts = [(m["epoch"], m["eval"][name]["top1"]) for m in evals if name in m["eval"]]
            if pts:
                axes[3].plot(*zip(*pts), marker="o", color=color, label=name.replace("_", "-"))
        axes[3].set_ylim(0, 1.02)
        axes[3].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    for ax in axes[:2]:  # legends under the plots, where they cover no line
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return data_uri(fig)


def class_counts(start: np.ndarray, end: np.ndarray, classnames: Sequence[str], start_label: str,
                 end_label: str, ylabel: str) -> str:
    """Two per-class count vectors: side-by-side bars, or for many classes both sorted by the start count."""
    fig = _figure(11, 3.6)
    ax = fig.subplots()
    k = len(classnames)
    if k <= MAX_BARS:
        x = np.arange(k)
        ax.bar(x - 0.2, start, 0.4, color=ZERO_SHOT, label=start_label)
        ax.bar(x + 0.2, end, 0.4, color=ADAPTED, label=end_label)
        ax.set_xticks(x, [c[:18] for c in classnames], rotation=60 if k > 10 else 0, ha="right" if k > 10 else "center",
                      fontsize=8)
    else:
        order = np.argsort(-start, kind="stable")
        ax.plot(start[order], color=ZERO_SHOT, label=start_label)
        ax.plot(end[order], color=ADAPTED, lw=0.8, label=end_label)
        ax.set_xlabel(f"{k} classes, sorted by the {start_label} count")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=9)
    return data_uri(fig)


def matrix(counts: np.ndarray, rows: Sequence[str], cols: Sequence[str], xlabel: str, ylabel: str) -> str:
    """A count matrix as a heatmap with the counts written in (at most MAX_MATRIX x MAX_MATRIX)."""
    side = 1.0 + 0.42 * max(len(cols), 4)
    fig = _figure(side + 1.5, 0.42 * max(len(rows), 4) + 1.5)
    ax = fig.subplots()
    im = ax.imshow(counts, cmap="Blues", aspect="auto")
    top = counts.max() if counts.size else 0
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_xticks(range(len(cols)), [c[:16] for c in cols], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[:16] for r in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return data_uri(fig)


def per_class_accuracy(zero_shot: np.ndarray, adapted: np.ndarray, classnames: Sequence[str]) -> str:
    """Per-class accuracy before and after: bars, or a scatter (above the diagonal = improved) for many classes."""
    k = len(classnames)
    if k <= MAX_BARS:
        return class_counts(100 * zero_shot, 100 * adapted, classnames, "zero-shot", "adapted", "accuracy (%)")
    fig = _figure(4.8, 4.6)
    ax = fig.subplots()
    ax.scatter(100 * zero_shot, 100 * adapted, s=8, color=ADAPTED, alpha=0.6)
    ax.plot([0, 100], [0, 100], color="black", lw=0.8)
    ax.set_xlabel("zero-shot accuracy (%)")
    ax.set_ylabel("adapted accuracy (%)")
    ax.set_title(f"{k} classes: above the line = improved", fontsize=10)
    return data_uri(fig)
