"""Plain HTTP on the public port: the files of ``static_dir`` (the chat page).

A request that does not ask for a WebSocket is answered here and the connection is
closed: a file under ``static_dir`` for ``GET``/``HEAD``, 404 when there is none (or
no ``static_dir``), 405 for other methods. :func:`static_file_path` is pure (it maps
a URL to a path and refuses traversal); :func:`static_response` reads the file.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote

from pygatewayworker.gateway.http11 import Request, http_response

__all__ = ["static_response", "static_file_path", "content_type_for"]

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
}


def content_type_for(path: str) -> str:
    """Content-Type by file extension (``application/octet-stream`` if unknown)."""
    ext = posixpath.splitext(path)[1].lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def static_file_path(static_dir: str, url_path: str) -> str | None:
    """Map a URL path to a file path under ``static_dir``, or ``None`` when it must
    not be served (empty ``static_dir``, ``..`` segments, NUL, backslashes, hidden
    files). ``/`` and paths ending in ``/`` map to ``index.html``. Pure: the caller
    still checks that the real path (after symlinks) stays inside ``static_dir``."""
    if not static_dir:
        return None
    try:
        path = unquote(url_path, errors="strict") if "%" in url_path else url_path
    except UnicodeDecodeError:
        return None
    if "\x00" in path or "\\" in path:
        return None
    segments = [seg for seg in path.split("/") if seg not in ("", ".")]
    if any(seg == ".." or seg.startswith(".") for seg in segments):
        return None
    if not segments or path.endswith("/"):
        segments.append("index.html")
    return posixpath.join(static_dir, *segments)


def static_response(static_root: str, request: Request) -> bytes:
    """The answer to a plain HTTP request: a file from ``static_root`` (a real path,
    or ``""`` for none) for GET/HEAD, 404 when there is none, 405 for other methods."""
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return http_response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
    path = _real_path(static_root, request.path)
    body = _read_file(path) if path else None
    if path is None or body is None:
        return http_response(404, b"not found\n", head_only=head_only)
    return http_response(200, body, content_type_for(path), head_only=head_only)


def _real_path(root: str, url_path: str) -> str | None:
    path = static_file_path(root, url_path)
    if path is None:
        return None
    real = os.path.realpath(path)  # symlinks must not lead out of static_dir
    if not real.startswith(root + os.sep):
        return None
    return real


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # missing, a directory, unreadable: all 404
        return None
