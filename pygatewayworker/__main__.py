"""``python -m pygatewayworker start|stop|...``: the same as the ``gatewayworker`` command."""

from pygatewayworker.cluster.cli import main

if __name__ == "__main__":
    main(prog_name="gatewayworker")
