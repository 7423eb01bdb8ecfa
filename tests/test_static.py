"""Plain HTTP on the public port (``gateway.static``): the URL-to-path mapping and
the answers, with no sockets."""

from __future__ import annotations

from pathlib import Path

from pygatewayworker.gateway.http11 import parse_request_head
from pygatewayworker.gateway.static import content_type_for, static_file_path, static_response


def test_static_file_path_refuses_traversal() -> None:
    root = "/srv/web"
    assert static_file_path(root, "/") == "/srv/web/index.html"
    assert static_file_path(root, "/css/app.css") == "/srv/web/css/app.css"
    assert static_file_path(root, "/sub/") == "/srv/web/sub/index.html"
    for bad in ("/../etc/passwd", "/a/../../x", "/%2e%2e/x", "/.git/config", "/a\\b", "/a%00b"):
        assert static_file_path(root, bad) is None, bad
    assert static_file_path("", "/index.html") is None
    assert static_file_path(root, "/%ff") is None


def test_content_types() -> None:
    assert content_type_for("x/index.HTML") == "text/html; charset=utf-8"
    assert content_type_for("a.js") == "text/javascript; charset=utf-8"
    assert content_type_for("a.bin") == "application/octet-stream"


def test_static_response(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "outside.txt").write_text("no")
    web = tmp_path / "web"
    web.mkdir()
    (web / "app.js").write_text("1;")
    (web / "link").symlink_to(tmp_path / "outside.txt")
    root = str(web.resolve())

    def answer(line: str) -> bytes:
        return static_response(root, parse_request_head(line.encode() + b"\r\nHost: x"))

    assert answer("GET /app.js HTTP/1.1").endswith(b"\r\n\r\n1;")
    assert b"text/javascript" in answer("GET /app.js HTTP/1.1")
    head_only = answer("HEAD /app.js HTTP/1.1")
    assert head_only.startswith(b"HTTP/1.1 200 ") and head_only.endswith(b"\r\n\r\n")
    assert answer("GET /link HTTP/1.1").startswith(b"HTTP/1.1 404 ")  # symlink out
    assert answer("GET /missing HTTP/1.1").startswith(b"HTTP/1.1 404 ")
    assert answer("GET / HTTP/1.1").startswith(b"HTTP/1.1 404 ")  # no index.html
    post = answer("POST / HTTP/1.1")
    assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
    assert static_response("", parse_request_head(b"GET / HTTP/1.1")).startswith(b"HTTP/1.1 404 ")
