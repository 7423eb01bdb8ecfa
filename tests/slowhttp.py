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
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except ConnectionResetError:
        # The server closed with our last bytes unread, so its kernel reset the
        # connection; its answer had come before (read() of everything would lose it).
        pass
    finally:
        task.cancel()
        writer.close()
    return b"".join(chunks), loop.time() - started
