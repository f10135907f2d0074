"""SynthIQ settings: everything comes from the environment through django-environ."""

from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from synthiq_project.dburl import mask_password

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SYNTHIQ_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
# A checkout's own settings (`make setup` writes a generated SECRET_KEY there); the process
# environment wins over the file. SYNTHIQ_ENV_FILE points elsewhere (or at nothing).
ENV_FILE = Path(os.environ.get("SYNTHIQ_ENV_FILE", BASE_DIR / ".env"))
if ENV_FILE.is_file():
    environ.Env.read_env(ENV_FILE)


def _read(name: str, cast, default):
    """Read one variable strictly: a value that does not parse names the variable."""
    try:
        return cast(name, default=default)
    except (ValueError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


DEBUG = _read("DEBUG", env.bool, False)
SECRET_KEY = _read("SECRET_KEY", env.str, "")
if not SECRET_KEY:
    if not DEBUG and os.environ.get("SYNTHIQ_ALLOW_DEV_KEY") != "1":
        # An installation without a key would sign sessions with a public value.
        raise ImproperlyConfigured(
            f"SECRET_KEY: not set and no {ENV_FILE} (run `make setup` in a checkout; in production set "
            "SECRET_KEY in the environment; SYNTHIQ_ALLOW_DEV_KEY=1 for a local demo only)"
        )
    SECRET_KEY = "synthiq-dev-only-not-secret"

ALLOWED_HOSTS = _read("ALLOWED_HOSTS", env.list, ["127.0.0.1", "localhost", "[::1]"])
SYNTHIQ_CONFIG = _read("SYNTHIQ_CONFIG", env.str, "")
CELERY_BROKER_URL = _read("CELERY_BROKER_URL", env.str, "")
# The rate history's sampling slot (the dashboard's charts; tests shorten it).
SYNTHIQ_RATE_SAMPLE_SECONDS = _read("SYNTHIQ_RATE_SAMPLE_SECONDS", env.float, 10.0)
if not 0.5 <= SYNTHIQ_RATE_SAMPLE_SECONDS <= 3600:
    raise ImproperlyConfigured("SYNTHIQ_RATE_SAMPLE_SECONDS: expected a number of seconds, 0.5-3600")
# How long runproxy waits for an unreachable database at start (tries logged, backing off).
SYNTHIQ_DB_WAIT_SECONDS = _read("SYNTHIQ_DB_WAIT_SECONDS", env.float, 60.0)
# Inline heartbeats in runproxy unless a broker runs them from Celery beat.
SYNTHIQ_INLINE_HEARTBEATS = not CELERY_BROKER_URL

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Counts failed logins on the admin/dashboard form and locks a username+address out.
    "axes",
    "pools",
    "health",
    "affinity",
    "routing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]
# Axes first: it refuses a locked-out username+address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "synthiq_project.urls"
WSGI_APPLICATION = "synthiq_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

def _make_dir(path: Path, what: str) -> None:
    """A folder SynthIQ writes to: created, or one line naming it and the setting to change."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(f"{what} {str(path)!r} cannot be created ({exc.strerror}): set SYNTHIQ_VAR_DIR "
                                   "(or LOG_FILE, DATABASE_URL) to a folder this user can write") from None


_default_db = f"sqlite:///{VAR_DIR / 'synthiq.sqlite3'}"
_DB_URL_FORMS = "sqlite:////path/file.sqlite3, postgres://user:password@host:5432/name or mssql://user:password@host/name"
try:
    with warnings.catch_warnings():  # an unknown scheme is reported below, in one line
        warnings.simplefilter("ignore")
        DATABASES = {"default": env.db_url("DATABASE_URL", default=_default_db)}
except (ValueError, environ.ImproperlyConfigured, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL: {exc} (expected {_DB_URL_FORMS})") from exc

_db = DATABASES["default"]
if not _db.get("ENGINE"):
    raise ImproperlyConfigured(f"DATABASE_URL: {mask_password(os.environ.get('DATABASE_URL', ''))!r} is not a "
                               f"database URL (expected {_DB_URL_FORMS})")
if "." not in _db["ENGINE"]:  # django-environ passes an unknown scheme on as the engine's name
    raise ImproperlyConfigured(f"DATABASE_URL: unknown scheme {_db['ENGINE']!r} (expected {_DB_URL_FORMS})")
# Persistent connections: a cache miss in runproxy must not pay for a new connection.
_db["CONN_MAX_AGE"] = _read("CONN_MAX_AGE", env.int, 600)
_db["CONN_HEALTH_CHECKS"] = True
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while runproxy writes; IMMEDIATE avoids the
    # deadlock-prone read-then-upgrade of deferred transactions under concurrency.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    _make_dir(Path(_db["NAME"]).parent, "the SQLite database's folder")
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("OPTIONS", {})["application_name"] = os.environ.get(
        "SYNTHIQ_PROCESS_NAME", "synthiq"
    )
_db.setdefault("TEST", {})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
_make_dir(STATIC_ROOT, "SYNTHIQ_VAR_DIR's static folder")
STATICFILES_DIRS = [BASE_DIR / "static"]
LOGIN_URL = "/admin/login/"

# HTTPS (all off by default: the local demo is plain http on 127.0.0.1). Behind a TLS
# proxy set them as docs/admin.md says; `manage.py check --deploy` is then clean.
SECURE_SSL_REDIRECT = _read("SECURE_SSL_REDIRECT", env.bool, False)
SECURE_HSTS_SECONDS = _read("SECURE_HSTS_SECONDS", env.int, 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _read("SECURE_HSTS_INCLUDE_SUBDOMAINS", env.bool, False)
SECURE_HSTS_PRELOAD = _read("SECURE_HSTS_PRELOAD", env.bool, False)
SESSION_COOKIE_SECURE = _read("SESSION_COOKIE_SECURE", env.bool, False)
CSRF_COOKIE_SECURE = _read("CSRF_COOKIE_SECURE", env.bool, False)
CSRF_TRUSTED_ORIGINS = _read("CSRF_TRUSTED_ORIGINS", env.list, [])
# waitress and gunicorn speak plain http here, so https ends at a proxy: it must say so in a
# header it sets itself (e.g. "HTTP_X_FORWARDED_PROTO,https"), or SSL_REDIRECT loops.
_proxy_ssl_header = _read("SECURE_PROXY_SSL_HEADER", env.tuple, ())
if _proxy_ssl_header:
    if len(_proxy_ssl_header) != 2 or not _proxy_ssl_header[0].startswith("HTTP_"):
        raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER: expected HTTP_<HEADER>,<value>, "
                                   "e.g. HTTP_X_FORWARDED_PROTO,https")
    SECURE_PROXY_SSL_HEADER = _proxy_ssl_header

# Login lockout (django-axes): 5 failures for one username from one address lock that pair
# out for 15 minutes, the right password included; a success clears the count. Attempts
# are kept in the database, so every web process (gunicorn workers, runproxy --http) sees
# them; `manage.py axes_reset` lifts a lockout early. The address is REMOTE_ADDR: behind a
# reverse proxy it is the proxy's.
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = dt.timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Failures during a lockout do not extend it: a guesser cannot keep an operator out for good.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# The username and path come from the client: escaped before they reach a log line.
AXES_CLIENT_STR_CALLABLE = "synthiq_project.authentication.axes_client_str"

# API token lockout (synthiq_project.authentication): this many bad `Authorization: Token`
# keys from one address within the window refuse every token from it (429) for the window.
SYNTHIQ_TOKEN_AUTH_FAILURE_LIMIT = 10
SYNTHIQ_TOKEN_AUTH_WINDOW_SECONDS = 300
# No CACHES setting: Django's default local-memory cache, which is per process. The token
# lockout counts per web process then (gunicorn with N workers lets N x the limit through);
# acceptable for runproxy --http's single web process, and a shared cache fixes it if needed.

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "synthiq_project.authentication.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SynthIQ admin API",
    "DESCRIPTION": "Status, pools, affinity bindings, routing activity and storage commitment.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}
# Serve static files straight from the app and STATICFILES_DIRS: the dashboard works
# without a collectstatic step (`make run`, runproxy --http).
WHITENOISE_USE_FINDERS = True

LOG_DIR = VAR_DIR / "log"
LOG_LEVEL = _read("LOG_LEVEL", env.str, "INFO").upper()
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
if LOG_LEVEL not in _LOG_LEVELS:
    raise ImproperlyConfigured(f"LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {LOG_LEVEL!r}")
LOG_FORMAT = _read("LOG_FORMAT", env.str, "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT: expected plain or json, got {LOG_FORMAT!r}")
# Where the rotating log file goes ("" for none: the console only, e.g. under journald).
LOG_FILE = _read("LOG_FILE", env.str, str(LOG_DIR / "synthiq.log"))
# Route lines carry the Patient ID unless this is off (a site that keeps patient data out of logs).
SYNTHIQ_LOG_PATIENT_ID = _read("SYNTHIQ_LOG_PATIENT_ID", env.bool, True)
# The audit trail (the config file's Audit block): messages queued per process before any is
# dropped, and the bytes the spool file may hold while the audit record repository is away.
SYNTHIQ_AUDIT_QUEUE = _read("SYNTHIQ_AUDIT_QUEUE", env.int, 10_000)
SYNTHIQ_AUDIT_SPOOL_BYTES = _read("SYNTHIQ_AUDIT_SPOOL_BYTES", env.int, 64 * 1024 * 1024)
if SYNTHIQ_AUDIT_QUEUE < 1 or SYNTHIQ_AUDIT_SPOOL_BYTES < 1024:
    raise ImproperlyConfigured("SYNTHIQ_AUDIT_QUEUE: at least 1; SYNTHIQ_AUDIT_SPOOL_BYTES: at least 1024")
_handlers = {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["tags"]}}
if LOG_FILE:
    _make_dir(Path(LOG_FILE).parent, "LOG_FILE's folder")
    _handlers["file"] = {
        "class": "logging.handlers.RotatingFileHandler",
        "filename": LOG_FILE,
        "maxBytes": 20 * 1024 * 1024,
        "backupCount": 5,
        "formatter": LOG_FORMAT,
        "filters": ["tags"],
        "delay": True,
    }
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"tags": {"()": "synthiq_project.logformat.ProcessTags"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s [%(process)d%(worker)s] %(name)s %(message)s"},
        "json": {"()": "synthiq_project.logformat.JsonLines"},
    },
    "handlers": _handlers,
    "loggers": {
        "synthiq": {"handlers": list(_handlers), "level": LOG_LEVEL, "propagate": False},
        # pynetdicom logs its own tracebacks on hostile input; SynthIQ logs what it sees itself.
        "pynetdicom": {"handlers": list(_handlers), "level": "CRITICAL", "propagate": False},
        # django-axes: login failures and lockouts at WARNING; its per-request INFO chatter is not kept.
        "axes": {"handlers": list(_handlers), "level": "WARNING", "propagate": False},
    },
}
