"""A minimal Django project around django-cas-server, for the SSO tests only.

State (SQLite) lives in EDUAIQ_CAS_STATE; people and their attributes in the
JSON file EDUAIQ_CAS_USERS ({username: {"password": ..., attribute: value|[values]}}),
read on every sign-in so tests can add people while the server runs.
"""

import os

STATE = os.environ["EDUAIQ_CAS_STATE"]
CAS_USERS_FILE = os.environ["EDUAIQ_CAS_USERS"]

SECRET_KEY = "eduaiq-test-cas-server-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "cas_server",
    "casidp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "casidp.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(STATE, "cas.sqlite3")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"
USE_TZ = True

CAS_AUTH_CLASS = "casidp.auth.JsonFileAuthUser"
CAS_SHOW_POWERED = False
CAS_TICKET_VALIDITY = 60
