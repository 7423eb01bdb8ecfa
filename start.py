"""Run and operate the cluster: ``python start.py start|stop|restart|reload|status|connections``.

See ``python start.py --help`` and cluster/cli.py.
"""

from cluster.cli import main

if __name__ == "__main__":
    main()
