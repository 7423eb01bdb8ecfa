"""The supervisor (master process), the command line and what every child process
shares. The master is synchronous and never imports user code."""
