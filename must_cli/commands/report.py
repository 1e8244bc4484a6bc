"""`report.html`: one self-contained page that shows what adaptation did to a run's labels, and what is known
about whether it helped: the share of changed labels (exact) and, once `must verify` has labels, the gain.

Everything is inline (CSS, PNG plots, JPEG thumbnails as data URIs), so the file opens offline
in any browser and prints. Numbers come from report_data.py, figures from report_plots.py.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from must_cli import __version__
from must_cli.files.atomic import atomic_write_text
from must_cli.base.config import MustConfig, load_preset
from must_cli.method.labeled import accuracy_report, confusion_matrix
from must_cli.files.images import ImageReadError, display_name, load_rgb
from must_cli.method.model import MustModel
from must_cli.base.runtime import pick_device
from must_cli.commands.report_data import ReportData, compute, read_run, write_record
from must_cli.commands.verify_session import verdict_line
from must_cli.commands.verify_stats import labels_for_margin
from must_cli.commands import report_plots as plots

REPORT_FILE = "report.html"
THUMB = 80  # thumbnail side in pixels
THUMB_CLASSES = 20  # classes that get a row of thumbnails
THUMBS_PER_CLASS = 6
CHANGED_THUMBS = 24
TOP_ROWS = 12  # rows of "most changed" tables
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;max-width:1180px;margin:24px auto;
padding:0 20px;line-height:1.45;font-size:15px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin:0 0 4px;border-bottom:2px solid #1f6fb4;padding-bottom:2px}
section{margin:26px 0;break-inside:avoid-page}p.read{color:#444;margin:4px 0 10px;font-style:italic}
table{border-collapse:collapse;margin:8px 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#eef3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.thumbs{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}
figure{margin:0;width:96px;font-size:11px;text-align:center}figure img{width:80px;height:80px;object-fit:cover;
border:1px solid #bbb}.row{display:flex;align-items:center;gap:10px}.row b{width:140px;font-size:13px}
.note{background:#fff6e0;border-left:4px solid #e0a000;padding:6px 10px}
@media print{body{max-width:none;margin:0;font-size:12px}section{break-inside:avoid}}
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


Section = tuple[str, str, str]  # title, how to read it, body (HTML); numbered when the page is put together


def section(title: str, how_to_read: str, body: str) -> Section:
    return title, how_to_read, body


def render(number: int, part: Section) -> str:
    title, how_to_read, body = part
    return f'<section><h2>{number}. {esc(title)}</h2><p class="read">{esc(how_to_read)}</p>{body}</section>'


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[object]]) -> str:
    """Numbers right-aligned under a header row; a header-less (key, value) table reads left to right."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>" if headers else ""
    body = "".join("<tr>" + "".join(
        f'<td class="num">{esc(c)}</td>' if headers and (isinstance(c, (int, float)) or str(c)[:1] in "+-0123456789")
        else f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{esc(alt)}">'


def thumbnail(path: Path) -> str | None:
    """A small JPEG data URI of one image (decoded at reduced size), or None if it cannot be read."""
    try:
        image = load_rgb(path, draft=THUMB)
    except ImageReadError:
        return None
    image.thumbnail((THUMB * 2, THUMB * 2))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures(items: Sequence[tuple[Path, str]]) -> str:
    cells = []
    for path, caption in items:
        uri = thumbnail(path)
        if uri:
            cells.append(f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
                         "</figcaption></figure>")
    return f'<div class="thumbs">{"".join(cells)}</div>'


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def labeled_by_both(d: ReportData) -> str:
    """The one sample count every section uses: images both models labeled, and the folder they came from."""
    n = int((d.zero_shot.valid() & d.adapted.valid()).sum())
    return f"the {n:,} images both models labeled" + (f" (an even sample of the {d.found:,} in the folder)"
                                                      if d.found > len(d.paths) else "")


# ---------------------------------------------------------------- sections


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
        ("shipped model", run.meta.get("chosen", "none yet")), ("model", cfg["model"] + ("" if local else f" ({cfg['pretrained']})")),
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


def pseudo_labels(d: ReportData) -> Section:
    names, k, tau = d.run.classnames, len(d.run.classnames), d.run.config["threshold"]
    zs, ad = d.zero_shot, d.adapted
    start, end = counts(zs.labels, k, zs.confidence >= tau), counts(ad.labels, k, ad.confidence >= tau)
    body = img(plots.class_counts(start, end, names, "start (zero-shot)", "end (adapted)", "images"), "histogram")
    return section(
        "Pseudo-labels at the start and at the end",
        f"Per class, the images labeled with confidence at least {tau} (the threshold for training), by the "
        f"zero-shot model (start) and the adapted model (end), on {labeled_by_both(d)}; a class that "
        "shrinks to nothing is a warning sign.",
        body + movers(start, end, names))


def flips(d: ReportData) -> Section:
    names, k = d.run.classnames, len(d.run.classnames)
    ok = d.zero_shot.valid() & d.adapted.valid()
    a, b = d.zero_shot.labels[ok], d.adapted.labels[ok]
    changed = a != b
    pairs = Counter(zip(a[changed].tolist(), b[changed].tolist()))
    body = f"<p><b>{pct(changed.mean() if len(a) else 0)}</b> of {esc(labeled_by_both(d))} changed label.</p>"
    if pairs:
        involved = Counter()
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
        body += img(plots.matrix(m, shown, shown, "adapted label", "zero-shot label"), "flip matrix")
        body += table(["zero-shot label", "adapted label", "images"],
                      [(names[i], names[j], n) for (i, j), n in pairs.most_common(TOP_ROWS)])
    body += img(plots.class_counts(counts(a, k), counts(b, k), names, "zero-shot", "adapted", "images"), "counts")
    scope = "" if k <= plots.MAX_MATRIX else f" (the {plots.MAX_MATRIX} classes most involved in changes)"
    return section(
        "Zero-shot vs adapted labels on the adaptation images",
        f"Each cell of the matrix{scope} counts images that moved from the row's label to the column's; "
        "unchanged images are left out. The bars below count all labels per class before and after.", body)


def thumbnails(d: ReportData) -> Section:
    names, ad, zs = d.run.classnames, d.adapted, d.zero_shot
    per_class = Counter(ad.labels[ad.valid()].tolist())
    rows = []
    for c, _ in sorted(per_class.most_common(THUMB_CLASSES), key=lambda t: t[0]):
        idx = np.flatnonzero(ad.labels == c)
        best = idx[np.argsort(-ad.confidence[idx], kind="stable")[:THUMBS_PER_CLASS]]
        items = [(d.paths[i], f"{ad.confidence[i]:.2f}") for i in best]
        rows.append(f'<div class="row"><b>{esc(names[c])}</b>{figures(items)}</div>')
    changed = np.flatnonzero(zs.valid() & ad.valid() & (zs.labels != ad.labels))
    sample = changed[np.linspace(0, len(changed) - 1, min(CHANGED_THUMBS, len(changed))).astype(int)] if len(changed) else []
    items = [(d.paths[i], f"{names[zs.labels[i]]} → {names[ad.labels[i]]}") for i in sample]
    scope = "" if len(names) <= THUMB_CLASSES else f" (the {THUMB_CLASSES} most predicted of {len(names)} classes)"
    return section(
        "Example images",
        f"Per class{scope}, the images the adapted model is most sure of (its confidence below each); then a "
        "sample of images whose label changed, as zero-shot → adapted. Whether the changes are right: the last section.",
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


def gain(d: ReportData) -> Section:
    """What is known about the gain: the exact share of changed labels; the verified gain once labels exist."""
    ok = d.zero_shot.valid() & d.adapted.valid()
    n, changed = int(ok.sum()), int((ok & (d.zero_shot.labels != d.adapted.labels)).sum())
    share = changed / n if n else 0.0
    run = esc(display_name(d.run.root))
    rows: list[tuple[str, str]] = [("labels changed by adaptation (exact)", f"{pct(share)} ({changed:,} of {n:,})")]
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
                f"about {labels_for_margin(share, changed)} answers give the gain to +-2 points."
                if changed else "No label changed, so adaptation cannot have changed accuracy on these images.")
    return section(
        "Did adaptation help?",
        "Two classifiers differ in accuracy only on the images whose label differs, so gain = share changed x "
        "(share of those the adapted model gets right - share zero-shot gets right). The share changed needs no "
        "labels; the rest needs a few dozen labeled changed images (docs/method.md). No label-free verdict is "
        "given: a score that training itself raises cannot tell.",
        table(None, rows) + f"<p>{said}</p>")


# ---------------------------------------------------------------- assembly


def build_report(run_dir: Path, images: Path | None = None, eval_dir: Path | None = None, device: str = "auto",
                 workers: int = 0, warn: Callable[[str], None] = lambda message: None,
                 zero_shot: MustModel | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path; --images/--eval-dir default to what the run recorded."""
    start = time.perf_counter()
    run = read_run(run_dir)
    images = images or (Path(run.record["images"]) if run.record.get("images") else None)
    eval_dir = eval_dir or (Path(run.record["eval_dir"]) if run.record.get("eval_dir") else None)
    d = compute(run, images, eval_dir, pick_device(device), workers, warn, zero_shot)
    parts = [summary(d), training(d)]
    if d.adapted is not None:
        parts += [pseudo_labels(d), flips(d), thumbnails(d)]
    if d.labeled is not None:
        parts.append(accuracy(d))
    if d.adapted is not None:
        parts.append(gain(d))
    note = "" if d.adapted is not None else ('<p class="note">The adaptation images were not found, so what needs '
                                             "them is left out: rebuild with <code>must report RUN --images DIR"
                                             "</code>.</p>")
    took = time.perf_counter() - start
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>must report: {esc(run.root.name)}'
            f"</title><style>{CSS}</style></head><body><h1>What adaptation did: {esc(run.root.name)}</h1>"
            f"<p>The adapted model is {esc(d.which_adapted)}.</p>{note}"
            f"{''.join(render(i, part) for i, part in enumerate(parts, start=1))}"
            f'<p class="read">Made by must-cli {esc(__version__)} in {took:.1f} s.</p></body></html>\n')
    out = run_dir / REPORT_FILE
    atomic_write_text(out, page)
    return out


@contextlib.contextmanager
def reported_when_done(run_dir: Path, record: dict, enabled: bool, device: str, workers: int,
                       warn: Callable[[str], None], zero_shot: MustModel | None = None) -> Iterator[None]:
    """Around `must adapt`'s training: however it ends, store what only the run knows and write the report.

    A stop, NaN or full disk is noted in the record and re-raised; a second Ctrl-C ("now") skips
    the report. A report that cannot be written must neither fail a good run nor hide why a
    run stopped, so its own errors become one warning that says how to retry.
    """
    try:
        yield
        record["status"] = "finished"
    except KeyboardInterrupt:
        enabled = False
        raise
    except Exception as e:
        record["status"] = f"ended early: {' '.join(str(e).split())[:300] or type(e).__name__}"
        raise
    finally:
        if enabled:
            try:
                write_record(run_dir, record)
                build_report(run_dir, device=device, workers=workers, warn=warn, zero_shot=zero_shot)
            except Exception as e:  # noqa: BLE001 - see the docstring
                warn(f"{run_dir / REPORT_FILE} not written ({' '.join(str(e).split())[:160]}): "
                     f"rebuild it with `must report {run_dir}`")
