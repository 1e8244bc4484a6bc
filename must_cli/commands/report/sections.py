"""What each section of report.html says, drawn from data.ReportData: one function per section.

Numbers come from data.py, figures from plots.py, the HTML pieces from html.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from must_cli.base.config import MustConfig, load_preset
from must_cli.files.images import display_name
from must_cli.method.labeled import accuracy_report, confusion_matrix
from must_cli.commands.report.data import ReportData
from must_cli.commands.report.html import Section, esc, figures, img, pct, section, table
from must_cli.commands.verify.session import verdict_line
from must_cli.commands.verify.stats import labels_for_margin
from must_cli.commands.report import plots

THUMB_CLASSES = 20  # classes that get a row of thumbnails
THUMBS_PER_CLASS = 6
CHANGED_THUMBS = 24
TOP_ROWS = 12  # rows of "most changed" tables


@dataclass(frozen=True)
class Changes:
    """Which adaptation images both models labeled, and which of those changed label: counted once per report,
    so every section quotes the same numbers."""

    both: np.ndarray  # per image: both models gave a label (neither failed to decode it)
    changed: np.ndarray  # per image: both labeled it, with different labels
    found: int  # adaptation images in the folder
    sampled: int  # of those, the ones both models were asked to label (all, or an even sample)

    @classmethod
    def of(cls, d: ReportData) -> "Changes":
        both = d.zero_shot.valid() & d.adapted.valid()
        return cls(both, both & (d.zero_shot.labels != d.adapted.labels), d.found, len(d.paths))

    @property
    def scope(self) -> str:
        """The sample every section counts on, in words."""
        return f"the {self.n:,} images both models labeled" + (
            f" (an even sample of the {self.found:,} in the folder)" if self.found > self.sampled else "")

    @property
    def n(self) -> int:
        return int(self.both.sum())

    @property
    def count(self) -> int:
        return int(self.changed.sum())

    @property
    def share(self) -> float:
        """Changed labels as a share of the images both models labeled (0 when there are none)."""
        return self.count / self.n if self.n else 0.0


def summary(d: ReportData) -> Section:
    run, cfg, rec = d.run, d.run.config, d.run.record
    preset = rec.get("preset")
    base = MustConfig(**load_preset(preset)).model_dump() if preset else MustConfig().model_dump()
    changed = [f"{k} = {v}" for k, v in cfg.items() if base.get(k) != v and k not in ("model", "pretrained")]
    epochs = [m for m in run.metrics if "loss" in m]
    seconds = sum(m.get("seconds", 0) for m in epochs)
    speeds = [m["images_per_second"] for m in epochs if "images_per_second" in m]
    local = cfg["model"].startswith(("local-dir:", "hf-hub:"))
    outcome = rec.get("status") or ("finished" if run.finished else "stopped before the end (no model file)")
    rows = [
        ("run folder", display_name(run.root)), ("outcome", outcome),
        ("shipped model", run.meta.get("chosen", "none yet")),
        ("model", cfg["model"] + ("" if local else f" ({cfg['pretrained']})")),
        ("classes", len(run.classnames)),
        ("images", f"{rec['images_used']:,} used, {rec['images_skipped']:,} skipped (unreadable)" if "images_used" in rec
         else f"{d.found:,} found" if d.images else "unknown"),
        ("image folder", display_name(d.images) if d.images else "unknown: pass --images to `must report`"),
        (f"settings that differ from {'preset ' + preset if preset else 'the defaults'}", "; ".join(changed) or "none"),
        ("epochs", f"{len(epochs)} of {cfg['epochs']}"), ("optimiser steps", epochs[-1]["step"] if epochs else 0),
        ("training time", f"{seconds / 60:.1f} min"), ("images/s", f"{np.mean(speeds):.1f}" if speeds else "-"),
        ("device", rec.get("device", "unknown")),
        ("tool version", rec.get("must_cli_version") or run.meta.get("must_cli_version", "unknown")),
    ]
    return section("Summary", "What was run, on which images and model, and how it ended.", table(None, rows))


def training(d: ReportData) -> Section:
    if not any("loss" in m for m in d.run.metrics):
        return section("Training curves", "No epoch finished, so there is nothing to plot yet.", "")
    return section(
        "Training curves",
        "Losses should fall; kept = share of images confident enough to train on; balance = 1 when every class is "
        "predicted equally often (a fall towards 0 means collapse onto few classes); agree = how often student and "
        "teacher give the same label.",
        img(plots.curves(d.run.metrics), "training curves"))


def counts(labels: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    ok = labels >= 0 if mask is None else (labels >= 0) & mask
    return np.bincount(labels[ok], minlength=k)


def movers(start: np.ndarray, end: np.ndarray, names: Sequence[str], n: int = 3) -> str:
    diff = end - start
    order = np.argsort(diff, kind="stable")
    lost = [f"{names[i]} ({diff[i]:+d})" for i in order[:n] if diff[i] < 0]
    gained = [f"{names[i]} ({diff[i]:+d})" for i in order[::-1][:n] if diff[i] > 0]
    return f"<p>Gained most: {esc(', '.join(gained) or 'none')}. Lost most: {esc(', '.join(lost) or 'none')}.</p>"


def pseudo_labels(d: ReportData, ch: Changes) -> Section:
    names, k, tau = d.run.classnames, len(d.run.classnames), d.run.config["threshold"]
    zs, ad = d.zero_shot, d.adapted
    start, end = counts(zs.labels, k, zs.confidence >= tau), counts(ad.labels, k, ad.confidence >= tau)
    body = img(plots.class_counts(start, end, names, "start (zero-shot)", "end (adapted)", "images"), "histogram")
    return section(
        "Pseudo-labels at the start and at the end",
        f"Per class, the images labeled with confidence at least {tau} (the threshold for training), by the "
        f"zero-shot model (start) and the adapted model (end), on {ch.scope}; a class that "
        "shrinks to nothing is a warning sign.",
        body + movers(start, end, names))


def flip_matrix(pairs: Counter, names: Sequence[str]) -> str:
    """The (zero-shot label, adapted label) counts as a matrix over the classes most involved in changes."""
    involved: Counter = Counter()
    for (i, j), n in pairs.items():
        involved[i] += n
        involved[j] += n
    keep = sorted(i for i, _ in involved.most_common(plots.MAX_MATRIX))
    m = np.zeros((len(keep), len(keep)), int)
    pos = {c: p for p, c in enumerate(keep)}
    for (i, j), n in pairs.items():
        if i in pos and j in pos:
            m[pos[i], pos[j]] = n
    shown = [names[i] for i in keep]
    return img(plots.matrix(m, shown, shown, "adapted label", "zero-shot label"), "flip matrix")


def flips(d: ReportData, ch: Changes) -> Section:
    names, k = d.run.classnames, len(d.run.classnames)
    a, b = d.zero_shot.labels[ch.both], d.adapted.labels[ch.both]
    moved = ch.changed[ch.both]
    pairs = Counter(zip(a[moved].tolist(), b[moved].tolist()))
    body = f"<p><b>{pct(ch.share)}</b> of {esc(ch.scope)} changed label.</p>"
    if pairs:
        body += flip_matrix(pairs, names)
        body += table(["zero-shot label", "adapted label", "images"],
                      [(names[i], names[j], n) for (i, j), n in pairs.most_common(TOP_ROWS)])
    body += img(plots.class_counts(counts(a, k), counts(b, k), names, "zero-shot", "adapted", "images"), "counts")
    scope = "" if k <= plots.MAX_MATRIX else f" (the {plots.MAX_MATRIX} classes most involved in changes)"
    return section(
        "Zero-shot vs adapted labels on the adaptation images",
        f"Each cell of the matrix{scope} counts images that moved from the row's label to the column's; "
        "unchanged images are left out. The bars below count all labels per class before and after.", body)


def thumbnails(d: ReportData, ch: Changes) -> Section:
    names, ad, zs = d.run.classnames, d.adapted, d.zero_shot
    per_class = Counter(ad.labels[ad.valid()].tolist())
    rows = []
    for c, _ in sorted(per_class.most_common(THUMB_CLASSES), key=lambda t: t[0]):
        idx = np.flatnonzero(ad.labels == c)
        best = idx[np.argsort(-ad.confidence[idx], kind="stable")[:THUMBS_PER_CLASS]]
        items = [(d.paths[i], f"{ad.confidence[i]:.2f}") for i in best]
        rows.append(f'<div class="row"><b>{esc(names[c])}</b>{figures(items)}</div>')
    changed = np.flatnonzero(ch.changed)
    sample = changed[np.linspace(0, len(changed) - 1, min(CHANGED_THUMBS, len(changed))).astype(int)] \
        if len(changed) else []
    items = [(d.paths[i], f"{names[zs.labels[i]]} → {names[ad.labels[i]]}") for i in sample]
    scope = "" if len(names) <= THUMB_CLASSES else f" (the {THUMB_CLASSES} most predicted of {len(names)} classes)"
    return section(
        "Example images",
        f"Per class{scope}, the images the adapted model is most sure of (its confidence below each); then a "
        "sample of images whose label changed, as zero-shot → adapted. Whether the changes are right: "
        "the last section.",
        "".join(rows) + "<h3>Images whose label changed</h3>" + (figures(items) if items else "<p>None.</p>"))


def accuracy(d: ReportData) -> Section:
    """Both models' accuracy on the labeled folder, computed as `must eval` computes it."""
    lab, names, k = d.labeled, d.run.classnames, len(d.run.classnames)
    truth = torch.as_tensor(lab.labels, dtype=torch.long)
    preds = {name: torch.as_tensor(p.labels, dtype=torch.long) for name, p in
             (("zero-shot", lab.zero_shot), ("adapted", lab.adapted))}
    measured = {name: accuracy_report(pred, truth, names, TOP_ROWS) for name, pred in preds.items()}
    recall = {name: np.array([m["per_class_recall"].get(c, 0.0) for c in names]) for name, m in measured.items()}
    body = table(["model", "top-1", "mean per class"],
                 [(name, pct(m["top1"]), pct(m["mean_per_class"])) for name, m in measured.items()])
    body += img(plots.per_class_accuracy(recall["zero-shot"], recall["adapted"], names), "per-class accuracy")
    if k <= plots.MAX_MATRIX:
        confusion = confusion_matrix(preds["adapted"], truth, k).numpy()
        body += img(plots.matrix(confusion, names, names, "adapted label", "true class"), "confusion matrix")
    top = [(p["true"], p["predicted"], p["count"]) for p in measured["adapted"]["confusions"]]
    body += "<h3>Most confused (adapted model)</h3>" + table(["true class", "predicted as", "images"], top)
    return section(
        f"Accuracy on the labeled folder {display_name(lab.folder)}",
        f"Measured on {len(truth):,} labeled images: per class, grey is zero-shot and blue is adapted; in the "
        "matrix, each row is a true class and the diagonal holds the correct answers.", body)


def gain(d: ReportData, ch: Changes) -> Section:
    """What is known about the gain: the exact share of changed labels; the verified gain once labels exist."""
    n, changed = ch.n, ch.count
    run = esc(display_name(d.run.root))
    rows: list[tuple[str, str]] = [("labels changed by adaptation (exact)", f"{pct(ch.share)} ({changed:,} of {n:,})")]
    v = d.verified
    if v is not None and v.gain is not None:
        rows.append(("verified gain (points)", f"{100 * v.gain:+.1f} (90% interval {100 * v.low:+.1f} to "
                                               f"{100 * v.high:+.1f})"))
        rows.append(("labels behind it", f"{v.tally.labels:,} of {v.changed:,} changed images"
                                         f" ({v.tally.skipped:,} skipped)"))
        said = esc(verdict_line(v)[0].upper() + verdict_line(v)[1:]) + "." + {
            "hurt": f" Ship the zero-shot classifier instead: <code>must verify {run} --choose zero-shot</code>.",
            "helped": "", "unknown": f" Label more with <code>must verify {run}</code>."}[v.verdict]
    else:
        said = (f"Not verified: no labels yet. <code>must verify {run}</code> shows you changed images one at a time; "
                f"about {labels_for_margin(ch.share, changed)} answers give the gain to +-2 points."
                if changed else "No label changed, so adaptation cannot have changed accuracy on these images.")
    return section(
        "Did adaptation help?",
        "Two classifiers differ in accuracy only on the images whose label differs, so gain = share changed x "
        "(share of those the adapted model gets right - share zero-shot gets right). The share changed needs no "
        "labels; the rest needs a few dozen labeled changed images (docs/method.md). No label-free verdict is "
        "given: a score that training itself raises cannot tell.",
        table(None, rows) + f"<p>{said}</p>")
