"""WSGI entry point for servers such as gunicorn: ``gunicorn djangoshop.wsgi``.

Each forked server process gets its own push client on its first push
(``djangoshop.push``), so one per process, as it should be."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")
application = get_wsgi_application()
