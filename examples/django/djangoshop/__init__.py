"""A minimal Django shop that pushes to the browser through pygatewayworker.

``settings`` (everything read from the environment, with development defaults),
``urls``, ``views`` (the page, login, bind, orders, the payment callback) and
``push`` (the one push client of the process). See ``examples/README.md``.
"""
