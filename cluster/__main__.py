"""``python -m pygatewayworker.cluster``: the master after ``start`` handed over to
it (``cluster.boot``; not a command of its own: use ``gatewayworker`` / ``start.py``).

The master leaves with ``os._exit`` once it has stopped everything and reported: a
failed ``start -d`` returns as soon as the master reported, and the master must be
gone by then, not still tearing down an interpreter it has no more use for."""

import logging
import os
import sys

from pygatewayworker.cluster.boot import main

code = main()
logging.shutdown()
for stream in (sys.stdout, sys.stderr):
    stream.flush()
os._exit(code)
