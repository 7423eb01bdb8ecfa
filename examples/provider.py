"""A stand-in for the payment provider: sends the signed "order paid" callback.

A real provider calls your backend from its own servers when a payment completes,
and signs the body so that nobody else can fake that call. The examples accept
``POST /payment/callback`` with a JSON body ``{"order_id": ..., "status": "paid" |
"failed", "timestamp": <Unix seconds>}`` and the header ``X-Signature: sha256=<hex
HMAC-SHA256 of the body>``, keyed with ``PAYMENT_WEBHOOK_SECRET``. The timestamp is
signed with the rest, so a captured callback replayed later than 5 minutes is
refused; within that window, a replay finds the order already settled and changes
nothing. Use it after pressing "Buy" on an example's page::

    python examples/provider.py http://127.0.0.1:8000 order-1001
    python examples/provider.py http://127.0.0.1:8000 order-1002 --status failed

Standard library only, so it runs with any Python. Its default secret is the
examples' published development value (what they use with ``SHOP_DEV=1``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["DEFAULT_SECRET", "callback_body", "post_callback", "signature"]

DEFAULT_SECRET = "dev-webhook-secret"


def signature(body: bytes, secret: str) -> str:
    """The ``X-Signature`` header value of ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def callback_body(order_id: str, status: str = "paid", timestamp: float | None = None) -> bytes:
    """The body of a callback, stamped with ``timestamp`` (default: now)."""
    stamp = int(time.time() if timestamp is None else timestamp)
    return json.dumps({"order_id": order_id, "status": status, "timestamp": stamp}).encode()


def post_callback(
    base_url: str, order_id: str, status: str = "paid", secret: str = DEFAULT_SECRET
) -> tuple[int, Any]:
    """POST the signed callback to ``base_url/payment/callback``; ``(status, JSON answer)``."""
    body = callback_body(order_id, status)
    request = urllib.request.Request(
        base_url.rstrip("/") + "/payment/callback",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": signature(body, secret)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", help="the example's address, e.g. http://127.0.0.1:8000")
    parser.add_argument("order_id", help="the order shown on the page, e.g. order-1001")
    parser.add_argument("--status", default="paid", choices=["paid", "failed"])
    parser.add_argument(
        "--secret",
        default=os.environ.get("PAYMENT_WEBHOOK_SECRET", DEFAULT_SECRET),
        help="the webhook secret [env PAYMENT_WEBHOOK_SECRET; default: the examples' own]",
    )
    args = parser.parse_args(argv)
    status, answer = post_callback(args.base_url, args.order_id, args.status, args.secret)
    print(status, json.dumps(answer))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
