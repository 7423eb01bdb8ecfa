"""A slow HTTP client for the servers' timeout tests: bytes that keep coming, a byte
at a time, in a request that never completes in time (a "slowloris")."""

from __future__ import annotations

import asyncio
import contextlib


async def dribble(
    address: tuple[str, int], data: bytes, timeout: float, first: bytes = b"", pause: float = 0.02
) -> tuple[bytes, float]:
    """Connect, send ``first`` at once, then ``data`` a byte every ``pause`` seconds;
    return all the server sent until it closed, and the seconds that took."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(first)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(pause)

    started = loop.time()
    task = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), timeout)
        return answer, loop.time() - started
    finally:
        task.cancel()
        writer.close()
