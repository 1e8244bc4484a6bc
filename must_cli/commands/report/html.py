"""The HTML building blocks of report.html: style, escaping, numbered sections, tables and inline images.

Everything is inline (CSS, PNG plots, JPEG thumbnails as data URIs), so the page opens offline in any
browser and prints. What the sections say lives in sections.py.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

from must_cli.files.images import ImageReadError, load_rgb

THUMB = 80  # thumbnail side in pixels
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


def page(name: str, intro: str, parts: Sequence[Section], footer: str) -> str:
    """The whole document: title, an intro paragraph (HTML), the numbered sections and a footer line."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>must report: {esc(name)}'
            f"</title><style>{CSS}</style></head><body><h1>What adaptation did: {esc(name)}</h1>{intro}"
            f"{''.join(render(i, part) for i, part in enumerate(parts, start=1))}"
            f'<p class="read">{esc(footer)}</p></body></html>\n')
