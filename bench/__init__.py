"""The benchmark suite: ``python -m bench run [--quick] [--only M4,M6] [--out DIR]``.

It starts the real cluster (``start.py start -d``) on a temporary copy of the bench
app (``bench/apps/benchapp``) with free ports, drives it from load generator
processes (``bench.loadgen``: raw asyncio WebSocket clients), and writes
``bench.json``, ``bench.md`` and ``latency.png``. See the README's Benchmarks section.
"""
