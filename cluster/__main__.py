"""``python -m pygatewayworker.cluster``: the master after ``start`` handed over to
it (``cluster.boot``; not a command of its own: use ``gatewayworker`` / ``start.py``)."""

import sys

from pygatewayworker.cluster.boot import main

sys.exit(main())
