"""Observability of a running cluster: Prometheus metrics, health and readiness
probes and the operator page, served by a process of its own (role ``metrics``)
that the master starts when ``--metrics-listen`` is given.

The service reads what every child already reports (``run/stats/<name>.json``) and
what the master writes (``run/state.json``) at request time; it never talks to the
children and the master's loop never waits for it. See ``docs/observability.md``.

This package imports nothing heavy at import time: roles use
:mod:`metrics.histogram` without loading ``prometheus_client``.
"""
