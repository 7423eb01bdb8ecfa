"""Run and operate the cluster from a checkout: ``python start.py start|stop|restart|reload|status|connections``.

The same command as ``gatewayworker`` (see ``python start.py --help``), with this
checkout's ``apps/`` and ``run/`` as the defaults wherever it is called from, so that
``python start.py start`` runs the bundled chat and push demo. ``--apps-dir`` /
``--run-dir`` (or ``GW_APPS_DIR`` / ``GW_RUN_DIR``) still choose others.
"""

import os
from pathlib import Path

from pygatewayworker.cluster.cli import main

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    os.environ.setdefault("GW_APPS_DIR", str(here / "apps"))
    os.environ.setdefault("GW_RUN_DIR", str(here / "run"))
    main(prog_name="start.py")
