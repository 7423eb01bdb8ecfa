"""The order rows the example locks: a sqlite table ``orders(id, locked_by, locked_at)``.

The database file is ``$ORDER_LOCK_DB`` (default ``orders.sqlite3`` in the current
directory). Each call opens its own short connection: several worker processes
share the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing

__all__ = ["lock", "unlock", "locked_by"]


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(os.environ.get("ORDER_LOCK_DB", "orders.sqlite3"), timeout=5)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, locked_by TEXT, locked_at REAL)"
    )
    return conn


def lock(order_id: int, holder: str) -> bool:
    """Lock the order for ``holder`` (a socket_id); ``False`` when someone else holds it."""
    # sqlite3's own context manager commits but does not close: close it too
    with closing(_db()) as conn, conn:
        conn.execute("INSERT OR IGNORE INTO orders (id) VALUES (?)", (order_id,))
        cursor = conn.execute(
            "UPDATE orders SET locked_by = ?, locked_at = ? "
            "WHERE id = ? AND (locked_by IS NULL OR locked_by = ?)",
            (holder, time.time(), order_id, holder),
        )
        return cursor.rowcount == 1


def unlock(order_id: int, holder: str) -> None:
    """Release the order if ``holder`` holds it."""
    with closing(_db()) as conn, conn:
        conn.execute(
            "UPDATE orders SET locked_by = NULL, locked_at = NULL WHERE id = ? AND locked_by = ?",
            (order_id, holder),
        )


def locked_by(order_id: int) -> str | None:
    """Who holds the order, or ``None``."""
    with closing(_db()) as conn, conn:
        row = conn.execute("SELECT locked_by FROM orders WHERE id = ?", (order_id,)).fetchone()
    return None if row is None else row[0]
