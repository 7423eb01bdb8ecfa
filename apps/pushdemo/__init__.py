"""Push-only demo: the page talks HTTP to a FastAPI backend, which pushes through
the gateway cluster (REFERENCE section 9). Run it with ``python -m apps.pushdemo``."""
