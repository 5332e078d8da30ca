"""Django settings for manallm, read from the environment (README#configuration)."""
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from manallm.secret_key import key_file_for, load_or_create

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def env_float(name, default):
    return float(env(name, default))


def env_int(name, default):
    value = env(name)
    return default if value is None else int(value)


def env_list(name, default=""):
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DEBUG = env("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*")
VERSION = "1.0.0"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "django_prometheus",
    "channels",
    "axes",
    "manallm",
    "routing",
    "health",
    "providers",
    "consumers",
    "requestlog",
]

# Every middleware is async-native; the admin's session/CSRF stack runs only on the
# paths that need it (manallm.middleware.BrowserStackMiddleware).
MIDDLEWARE = [
    "manallm.middleware.RequestIDMiddleware",
    "manallm.middleware.SecurityMiddleware",
    "manallm.middleware.CorsMiddleware",
    "manallm.middleware.PrometheusMiddleware",
    "manallm.middleware.BrowserStackMiddleware",
    "manallm.middleware.ClientKeyMiddleware",
]

ROOT_URLCONF = "manallm.urls"
ASGI_APPLICATION = "manallm.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Pooled connections (CONN_MAX_AGE) are checked before their first use in each request
# and DB-thread call (CONN_HEALTH_CHECKS), so a connection the database dropped (a
# restart) is replaced and the first request after an outage succeeds.
DATABASES = {"default": dj_database_url.parse(env("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
                                              conn_max_age=600, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the probe loop, the alias poller and admin writes share one file.
    # IMMEDIATE transactions take the write lock when they begin, so a writer waits for
    # another (up to the timeout) instead of failing to upgrade a read lock mid-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = None
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # An unreachable server fails a connection attempt in seconds (libpq waits forever
    # by default): a management write then answers 503 instead of hanging its worker.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Never a constant: unset, a random key is generated once and kept beside the database
# (manallm.secret_key; README#exposing-manallm).
SECRET_KEY = env("DJANGO_SECRET_KEY") or load_or_create(key_file_for(DATABASES["default"], BASE_DIR))

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- manallm -----------------------------------------------------------------------

ALIASES_FILE = env("ALIASES_FILE", str(BASE_DIR / "aliases.yaml"))
MANA_LLM_API_KEYS = env_list("MANA_LLM_API_KEY")
MANA_LLM_ADMIN_KEY = env("MANA_LLM_ADMIN_KEY")
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

CONNECT_TIMEOUT = env_float("CONNECT_TIMEOUT", 2)
FIRST_TOKEN_TIMEOUT = env_float("FIRST_TOKEN_TIMEOUT", 60)
STREAM_IDLE_TIMEOUT = env_float("STREAM_IDLE_TIMEOUT", 30)
RETRIES = env_int("RETRIES", 1)
RETRY_AFTER_MAX = env_float("RETRY_AFTER_MAX", 5)
BREAKER_FAILURE_THRESHOLD = env_int("BREAKER_FAILURE_THRESHOLD", 2)
BREAKER_BACKOFF_SECONDS = env_float("BREAKER_BACKOFF_SECONDS", 60)
# How often each worker re-reads alias and breaker state written by other processes.
STATE_POLL_INTERVAL = env_float("STATE_POLL_INTERVAL", 0.25)
MODELS_CACHE_SECONDS = env_float("MODELS_CACHE_SECONDS", 60)
# The in-process response cache's bound when REDIS_URL is unset (README#response-cache).
CACHE_MAX_BYTES = env_int("CACHE_MAX_BYTES", 64 * 1024 * 1024)
# Server processes `make run` starts on one listening socket, and how long a SIGTERM'd
# server lets in-flight requests and streams finish (README#running-several-replicas).
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 1)
SHUTDOWN_GRACE = env_float("SHUTDOWN_GRACE", 30)
# The request log (README#request-log): which requests get a row, and for how many days.
REQUEST_LOG = env("REQUEST_LOG", "errors").lower()
if REQUEST_LOG not in ("off", "errors", "all"):
    raise ValueError(f"REQUEST_LOG must be off, errors or all, not {REQUEST_LOG!r}")
REQUEST_LOG_DAYS = env_float("REQUEST_LOG_DAYS", 7)
# How often each process writes its usage counters to the database (README#consumers).
USAGE_FLUSH_SECONDS = env_float("USAGE_FLUSH_SECONDS", 5)

# (name, kind, URL variable, default URL, key variable); ollama needs no key.
PROVIDER_CATALOGUE = [
    ("ollama", "ollama", "OLLAMA_URL", "http://localhost:11434", None),
    ("openrouter", "openai", "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    ("groq", "openai", "GROQ_BASE_URL", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    ("together", "openai", "TOGETHER_BASE_URL", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    ("openai", "openai", "OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("google", "google", "GOOGLE_BASE_URL", None, "GOOGLE_API_KEY"),
]
PROVIDER_NAMES = [entry[0] for entry in PROVIDER_CATALOGUE]


def _configured_providers():
    providers = {}
    for name, kind, url_var, default_url, key_var in PROVIDER_CATALOGUE:
        api_key = env(key_var) if key_var else None
        if key_var and not api_key:
            continue
        prefix = name.upper()
        max_concurrent = env_int(f"{prefix}_MAX_CONCURRENT", None)
        providers[name] = {
            "kind": kind,
            "base_url": env(url_var, default_url),
            "api_key": api_key,
            "max_concurrent": max_concurrent if max_concurrent and max_concurrent > 0 else None,
            "timeout": env_float(f"{prefix}_TIMEOUT", 120),
        }
    providers.get("google", {})["default_model"] = env("GOOGLE_DEFAULT_MODEL", "gemini-2.5-flash")
    return providers


PROVIDERS = _configured_providers()
# Ollama model families known to call tools, used when /api/show cannot tell.
OLLAMA_TOOL_FAMILIES = env_list(
    "OLLAMA_TOOL_FAMILIES", "llama3.1,llama3.2,llama3.3,llama4,qwen2.5,qwen3,mistral,mixtral,command-r,firefunction"
)

CORS_ALLOWED_ORIGINS = env_list("CORS_ORIGINS", "http://localhost:5173")
CORS_ALLOW_HEADERS = ["authorization", "content-type", "x-api-key", "x-request-id", "openai-organization", "openai-project"]
CORS_EXPOSE_HEADERS = ["x-request-id", "x-mana-llm-resolved", "x-mana-llm-attempts"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "manallm.errors.drf_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

PROMETHEUS_EXPORT_MIGRATIONS = False

LOG_LEVEL = env("LOG_LEVEL", "info").upper()
LOG_FORMAT = env("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "manallm.logs.RequestIDFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "manallm.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# --- Exposing manallm (README#exposing-manallm) ---------------------------------------

CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# TLS ends at a reverse proxy that sets X-Forwarded-Proto (and overwrites a client's).
# It also means every peer is the proxy, so no client counts as loopback (manallm.auth).
BEHIND_HTTPS_PROXY = env("BEHIND_HTTPS_PROXY", "0") == "1"
if BEHIND_HTTPS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = BEHIND_HTTPS_PROXY
# Admin messages stay on the server (the session) until shown: the one that carries a newly
# issued consumer key (README#consumers) must not travel in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
SECURE_SSL_REDIRECT = env("SECURE_SSL_REDIRECT", "1" if BEHIND_HTTPS_PROXY else "0") == "1"
# Load balancers and Prometheus probe the port directly, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env("SECURE_HSTS_INCLUDE_SUBDOMAINS", "0") == "1"
SECURE_HSTS_PRELOAD = env("SECURE_HSTS_PRELOAD", "0") == "1"
# Django's defaults, written out because manallm.middleware.SecurityMiddleware and the
# admin's X-Frame-Options rely on them: nosniff, same-origin referrer and opener, DENY.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Admin login throttling (django-axes): a username failing from one address is locked
# out after ADMIN_LOGIN_FAILURE_LIMIT tries for ADMIN_LOGIN_COOLOFF_MINUTES.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("ADMIN_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

# Checks that look for middleware by dotted path at the top level of MIDDLEWARE. manallm
# runs Django's session/auth/messages/CSRF/X-Frame-Options, axes' and the security
# middleware inside async-native wrappers (manallm.middleware), so these are silenced
# and manallm.checks runs them (and the deploy checks they gate: HSTS, SSL redirect,
# secure CSRF cookie…) against the stack as it runs, reporting as manallm.<id>.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410",
                          "security.W001", "security.W002", "security.W003", "axes.W002"]
