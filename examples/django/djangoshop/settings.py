"""Settings of the Django example: no database, sessions in a signed cookie.

Every value a deployment changes comes from the environment; the defaults are for a
development machine and match ``apps/shop/start_*.py``:

========================= ===================================== ===========================
variable                  meaning                               default
========================= ===================================== ===========================
GW_REGISTER               register address(es) of the cluster    127.0.0.1:1280
                          (the same variable the cluster reads)
GW_SECRET                 the cluster's secret                   (none)
GATEWAY_WS_URL            the WebSocket URL the page opens       ws://127.0.0.1:7280/
PAYMENT_WEBHOOK_SECRET    key of the provider's callback         required (see SHOP_DEV)
                          signature
DJANGO_SECRET_KEY         Django's signing key                   required (see SHOP_DEV)
SHOP_DEV                  ``1``: development mode: the two keys  (off)
                          above may be left unset, and then
                          are the published development ones
DJANGO_DEBUG              ``1`` serves /static/ from runserver   SHOP_DEV's value
========================= ===================================== ===========================

The two keys have published development values (in this file and in
``examples/provider.py``): with them, anyone could sign a session cookie or a
payment callback. So the settings refuse to load without them unless ``SHOP_DEV=1``
says this is a development machine (the cluster's workers load these settings too:
set the same variables for ``gatewayworker start``).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

DEV = os.environ.get("SHOP_DEV") == "1"
DEV_KEYS = {
    "DJANGO_SECRET_KEY": "dev-only-not-secret-change-me",
    "PAYMENT_WEBHOOK_SECRET": "dev-webhook-secret",
}


KEYS = {name: os.environ.get(name) or (value if DEV else "") for name, value in DEV_KEYS.items()}
if not all(KEYS.values()):
    raise ImproperlyConfigured(
        f"{' and '.join(name for name, value in KEYS.items() if not value)} not set: set "
        "each to a long random secret. (For a development machine only, SHOP_DEV=1 uses "
        "the published development values.)"
    )

SECRET_KEY = KEYS["DJANGO_SECRET_KEY"]
DEBUG = os.environ.get("DJANGO_DEBUG", "1" if DEV else "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# The push-client settings read by djangoshop.push.
GATEWAY_REGISTER = os.environ.get("GW_REGISTER", "127.0.0.1:1280")
GATEWAY_SECRET = os.environ.get("GW_SECRET", "")
GATEWAY_WS_URL = os.environ.get("GATEWAY_WS_URL", "ws://127.0.0.1:7280/")
PAYMENT_WEBHOOK_SECRET = KEYS["PAYMENT_WEBHOOK_SECRET"]
# A provider callback older (or newer) than this is refused: a replayed one.
PAYMENT_CALLBACK_WINDOW = 300

INSTALLED_APPS = ["django.contrib.staticfiles"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "djangoshop.urls"
WSGI_APPLICATION = "djangoshop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # shop.html is shared by the three examples: examples/templates/.
        "DIRS": [BASE_DIR.parent / "templates"],
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# No database: the "logged-in user" is a name kept in a signed session cookie, and
# orders live in memory (djangoshop.views). A real project keeps django.contrib.auth,
# binds request.user.pk and stores orders with the ORM; nothing else changes.
DATABASES: dict[str, dict[str, str]] = {}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# The page carries the CSRF token (get_token) and its script sends it back in the
# X-CSRFToken header, so the CSRF cookie itself can stay out of scripts' reach.
CSRF_COOKIE_HTTPONLY = True

STATIC_URL = "static/"
# gatewayworker.js is shared by the three examples: examples/static/.
STATICFILES_DIRS = [BASE_DIR.parent / "static"]

USE_TZ = True
# Django sets the process's TZ from this (its own default is America/Chicago), and the
# business workers run django.setup(): their log times follow it.
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
