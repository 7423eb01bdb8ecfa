"""Events of the Django example's gateway app.

The page talks to Django over HTTP; this app only gives each connection its
client_id (``init``), which the page posts to Django's ``/bind`` view. Pushes come
from Django through its ``GatewayClient`` (``djangoshop.push``).

``on_worker_start`` sets Django up in each business worker process, so that Events
code may import the project's settings and models. But do not query the database
from a callback yet: callbacks run on the worker's event loop, where Django's ORM
raises ``SynchronousOnlyOperation``. Keep ORM work in the views until callbacks can
run in threads (a planned worker option); the web app is where the user's data is
anyway.
"""

import json
import logging
import os

from pygatewayworker import api

log = logging.getLogger("djangoshop.events")


class Events:
    @staticmethod
    def on_worker_start(worker):
        # The apps folder's parent (examples/django) is first on sys.path in every
        # cluster process, so the project's settings module is importable here.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")
        import django

        django.setup()
        log.info(
            "%s: Django %s set up with %s",
            worker.name,
            django.get_version(),
            os.environ["DJANGO_SETTINGS_MODULE"],
        )

    @staticmethod
    def on_connect(client_id):
        api.send_to_current_client(json.dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    def on_message(client_id, message):
        """Pages send only pongs (gatewayworker.js answers the gateway's pings, which
        keeps the connection alive); their requests go to Django over HTTP."""
