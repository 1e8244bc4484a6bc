"""The verify page's web server: local only, token-checked, images by index, state changed only by POST.

Like Jupyter and TensorBoard: bound to 127.0.0.1 on a free port, with a random token in the URL
(secrets.token_urlsafe); every request without it, or for another host name (DNS rebinding), is
answered 403. Images are served by their index into the run's images, and only changed ones:
no path is ever taken from a request, so nothing outside the run's changed set can be read.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from must_cli.files.images import ImageReadError, load_rgb
from must_cli.commands.verify.session import Session

HOST = "127.0.0.1"
SHOWN_SIDE = 448  # small images are scaled up to this (longer side), large ones down: a glance is enough
MAX_BODY = 4096  # bytes of a POST body: an answer is a few dozen


def page_html(token: str) -> bytes:
    template = resources.files("must_cli.templates").joinpath("verify.html").read_text(encoding="utf-8")
    return template.replace("{{TOKEN}}", token).encode("utf-8")


def shown_image(session: Session, index: int) -> bytes | None:
    """The changed image ``index`` as PNG, scaled to SHOWN_SIDE; None if it is not a changed image or unreadable."""
    if index not in session.order:
        return None
    try:
        image = load_rgb(session.both.path(index))
    except (ImageReadError, OSError):
        return None
    scale = SHOWN_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, resample=3)  # bicubic: smooth when a 32-px image is scaled up
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class VerifyServer(ThreadingHTTPServer):
    """The page's server: one Session, one token; port 0 picks a free port."""

    daemon_threads = True

    def __init__(self, session: Session, port: int = 0):
        self.session, self.token = session, secrets.token_urlsafe(32)
        super().__init__((HOST, port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that drops a connection (an image load cut short by the next answer) is not an error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/?token={self.token}"


class Handler(BaseHTTPRequestHandler):
    server: VerifyServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the terminal shows the URL and the summary, not one line per request."""

    def _allowed(self) -> bool:
        query = parse_qs(urlsplit(self.path).query)
        token = (query.get("token") or [""])[0]
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return secrets.compare_digest(token, self.server.token) and host in (HOST, "localhost")

    def _send(self, status: HTTPStatus, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token stays out of any referer
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._allowed():
            return self._send(HTTPStatus.FORBIDDEN, b"403: open the URL `must verify` printed (it holds the token)\n")
        route = urlsplit(self.path).path
        if route == "/":
            return self._send(HTTPStatus.OK, page_html(self.server.token), "text/html; charset=utf-8")
        if route == "/state":
            return self._json(self.server.session.state())
        if route == "/classes":
            return self._json(self.server.session.classnames)
        if route.startswith("/image/") and route[len("/image/"):].isdigit():
            png = shown_image(self.server.session, int(route[len("/image/"):]))
            if png is not None:
                return self._send(HTTPStatus.OK, png, "image/png")
        return self._send(HTTPStatus.NOT_FOUND, b"404\n")

    def do_POST(self) -> None:  # noqa: N802
        if not self._allowed():
            return self._send(HTTPStatus.FORBIDDEN, b"403\n")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"413\n")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._send(HTTPStatus.BAD_REQUEST, b"400: JSON body expected\n")
        session, route = self.server.session, urlsplit(self.path).path
        if route == "/answer" and isinstance(body, dict) and isinstance(body.get("index"), int):
            done = session.answer(body["index"], str(body.get("choice", "")), str(body.get("class") or ""))
            return self._json(session.state(), HTTPStatus.OK if done else HTTPStatus.CONFLICT)
        if route == "/undo":
            session.undo()
            return self._json(session.state())
        return self._send(HTTPStatus.NOT_FOUND, b"404\n")

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"405: only GET and POST\n")

    do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815
