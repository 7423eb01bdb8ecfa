"""The runner's handle on its load generator processes (``bench.loadgen``)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from bench import loadgen

__all__ = ["GenPool", "split", "latencies"]


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def latencies(results: list[dict[str, Any]], key: str = "lat") -> array[int]:
    """Concatenate the ``key`` arrays (``lat``: latencies in µs) of generator results."""
    merged: array[int] = array("q")
    for result in results:
        merged.frombytes(result.get(key, b""))
    return merged


class GenPool:
    """``count`` generator processes; generator ``i`` binds its sockets to source
    addresses ``127.0.0.(2+2i)`` and ``127.0.0.(3+2i)``."""

    def __init__(self, count: int, host: str, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for i in range(count):
            parent, child = ctx.Pipe()
            sources = [f"127.0.0.{2 + 2 * i}", f"127.0.0.{3 + 2 * i}"]
            proc = ctx.Process(target=loadgen.main, args=(child, host, port, sources), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        self._threads = ThreadPoolExecutor(max_workers=count, thread_name_prefix="gen-pipe")
        self._ps = [psutil.Process(p.pid) for p in self.procs]

    def __len__(self) -> int:
        return len(self.procs)

    async def call(self, cmds: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
        """Send one command to every generator (a list: one each) and gather the
        answers; raises ``RuntimeError`` when one reports an error."""
        if isinstance(cmds, dict):
            cmds = [cmds] * len(self.pipes)
        loop = asyncio.get_running_loop()
        for pipe, cmd in zip(self.pipes, cmds, strict=True):
            pipe.send(cmd)
        results = await asyncio.gather(
            *(loop.run_in_executor(self._threads, pipe.recv) for pipe in self.pipes)
        )
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError("load generator failed: " + "; ".join(errors))
        return list(results)

    def cpu_seconds(self) -> list[float]:
        """User + system CPU seconds of each generator so far."""
        out = []
        for proc in self._ps:
            try:
                times = proc.cpu_times()
                out.append(times.user + times.system)
            except psutil.NoSuchProcess:
                out.append(0.0)
        return out

    def close(self) -> None:
        """Stop every generator (they drop their clients first); kill stragglers."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"op": "exit"})
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for pipe in self.pipes:
            pipe.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
