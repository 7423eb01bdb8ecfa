"""Observability of a running cluster: Prometheus metrics, health and readiness
probes and the operator page, served by a process of its own (role ``metrics``)
that the master starts when ``--metrics-listen`` is given.

The service reads what every child already reports (``run/stats/<name>.json``) and
what the master writes (``run/state.json``) at request time; it never talks to the
children and the master's loop never waits for it. See ``docs/observability.md``.

Layering: this package sits above the supervisor (it reads the files ``cluster``
writes and imports ``cluster.state``/``cluster.status``); the supervisor knows it only
by the import string of its runtime (``cluster.observe``). The roles' side of
metrics is the pure :mod:`runtime.histogram` and a few counters in their stats.
"""
