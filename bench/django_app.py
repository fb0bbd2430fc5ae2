"""django-river-ml 0.0.21, the server flask-river-ml replaces, as a one-file Django project.

bench/served.py serves it beside the extension to compare the two on the same machine, models
and load. It runs in its own virtual environment (``--django-venv``, built by served.py with
``pip install django-river-ml==0.0.21 "django-ratelimit<4" pyjwt gunicorn``: 0.0.21 imports the
``ratelimit`` package that django-ratelimit 4 renamed), from the repository's root, with as
many workers as the other servers (``--workers``)::

    <django venv>/bin/gunicorn --bind 127.0.0.1:<port> --workers 1 bench.django_app:application

configured the way its README shows: the app and Django REST framework installed, the default
shelve store (in ``DJANGO_RIVER_ML_APP_DIR``), authentication and rate limits off. Its timing
middleware (which keeps its learn and predict stats) is part of the app, so it runs here too.
"""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.urls import include, path

APP_DIR = os.environ["DJANGO_RIVER_ML_APP_DIR"]

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "rest_framework.authtoken",
        "django_river_ml",
    ],
    MIDDLEWARE=[],
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(APP_DIR, "db.sqlite3")}},
    DJANGO_RIVER_ML={"APP_DIR": APP_DIR, "STORAGE_BACKEND": "shelve", "DISABLE_AUTHENTICATION": True},
)
django.setup()

# Importing its settings appends the app's timing middleware to MIDDLEWARE, as it does in a
# Django project whose settings module it reads; that has to happen before the handler loads.
import django_river_ml.settings  # noqa: E402,F401
from django.core.wsgi import get_wsgi_application  # noqa: E402

urlpatterns = [path("", include("django_river_ml.urls"))]
application = get_wsgi_application()
