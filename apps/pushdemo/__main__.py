"""One command for the whole demo: ``python -m apps.pushdemo``.

Starts the demo's cluster (``start.py start --app pushdemo``, its own run directory
``run/pushdemo``) in a child process, then the web backend in this one; Ctrl-C
stops both. Options are those of ``python -m apps.pushdemo.web``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from apps.pushdemo.web import main as web_main

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    command = [sys.executable, str(ROOT / "start.py"), "start", "--app", "pushdemo"]
    command += ["--apps-dir", str(ROOT / "apps"), "--run-dir", str(ROOT / "run" / "pushdemo")]
    cluster = subprocess.Popen(command, cwd=ROOT)
    try:
        web_main(sys.argv[1:])
    finally:
        if cluster.poll() is None:
            cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(30)
        except subprocess.TimeoutExpired:
            cluster.kill()
    return cluster.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
