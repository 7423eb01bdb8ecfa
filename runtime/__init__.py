"""The layer every role process runs on, below the roles and the supervisor.

What a child process needs to serve, and nothing of the supervisor itself:

- :mod:`.spec`: :class:`~.spec.ChildSpec` and :class:`~.spec.ExitCode`, the contract
  between the master and a child (what it is handed, what its exit code means);
- :mod:`.service`: :func:`~.service.run_service`, the event loop, signals, master
  watchdog and stats file around a role's service object;
- :mod:`.sockets`: binding a listening socket, and explaining "address in use";
- :mod:`.logs`: a child's logging into the master's log pipe.

Dependencies point one way: protocol modules <- this layer <- role runtimes
(``gateway``, ``register``, ``businessworker``, ``pushapi``, ``pusher``) <- the
supervisor and command line (``cluster``). Nothing here imports a role or
``cluster`` (``tests/test_layering.py`` checks it).
"""
