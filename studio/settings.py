"""Settings for both run modes.

Embedded (default): SQLite under var/, the in-memory channel layer and the job
controller inside the web process. Server mode: DATABASE_URL (PostgreSQL) and
REDIS_URL set; web workers and `manage.py runcontroller` run as separate processes.
Nothing else in the code branches on the mode.
"""

import hashlib
import importlib.util
import json
import os
import secrets
from pathlib import Path

import dj_database_url
import django_stubs_ext

from studio.env import env_bool, env_float, env_int, env_list, env_path, env_str

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("STUDIO_VAR_DIR", BASE_DIR / "var")

# Everything the studio writes (database, uploads, job records, the secret key) is its
# own: 0600 files, 0700 folders, whichever process of it writes them. Every entry point
# (manage.py, the ASGI/WSGI apps, tests) loads these settings first.
os.umask(0o077)
# Local jobs run as uids of their own (when the studio runs as root) and must be able to
# pass through var/ to their folders: traverse, not list. Nothing in it is readable.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if VAR_DIR.stat().st_uid == os.geteuid():
    VAR_DIR.chmod(0o711)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in var/."""
    if key := env_str("SECRET_KEY"):
        return key
    path = VAR_DIR / "secret_key"
    try:  # created 0600 from its first byte, and only once even if two processes race
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "channels",
    "studio",
    "compute",
    "data",
    "environments",
    "jobs",
    "tracking",
    "registry",
    "endpoints",
]

MIDDLEWARE = [
    "studio.middleware.BodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "studio.urls"
ASGI_APPLICATION = "studio.asgi.application"
WSGI_APPLICATION = "studio.wsgi.application"

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
                "studio.context_processors.studio",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    # Pages run in the web threads, socket consumers and the controller in threads of
    # their own: a pool (Django's psycopg pool support) shares and bounds the connections.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_SIZE", 10),
            "timeout": 30,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "studio.sqlite3"),
            # WAL lets the web server read while the controller writes; the
            # immediate transactions avoid SQLITE_BUSY on lock upgrades.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            "TEST": {"NAME": str(VAR_DIR / "test.sqlite3")},  # a file: shared by test threads
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "capacity": 2000,
                "expiry": 30,
                "prefix": env_str("STUDIO_CHANNEL_PREFIX", "kstudio"),
            },
        }
    }
    # Rate limits count across every web worker.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 2000}}
    }

# What each app gives a new workspace (called in order, idempotent).
STUDIO_WORKSPACE_SETUP = [
    "compute.services.seed_local",
    "data.services.seed_default",
]
# The backend class of each kind of compute target (compute.backends).
STUDIO_COMPUTE_BACKENDS = {
    "local": "compute.backends.local.LocalBackend",
    "kubernetes": "compute.backends.kubernetes.KubernetesBackend",
}
# Tokens other than users' that the MLflow API accepts (a job's own, for its own run): each
# function returns (user, workspace name, run id) or None.
STUDIO_TRACKING_IDENTITIES = ["jobs.tokens.tracking_identity"]
# Trees of files the MLflow artifact proxy serves beside runs' and logged models' own:
# root -> a function (workspace, path parts) -> (tree, path within it).
STUDIO_ARTIFACT_ROOTS = {"registry": "registry.mlflow.model_tree"}
# Who may refuse a compute target's deletion (each returns a reason, or None).
STUDIO_COMPUTE_IN_USE = ["jobs.services.compute_in_use", "endpoints.services.compute_in_use"]
# Told of every new model version, after it commits (endpoints roll the deployments that
# follow a model's latest version).
STUDIO_MODEL_REGISTERED = ["endpoints.services.model_registered"]

# The controller runs inside the web process unless told otherwise (server mode).
STUDIO_EMBEDDED_CONTROLLER = env_bool("STUDIO_EMBEDDED_CONTROLLER", not REDIS_URL)


def jobs_dir(var_dir: Path, euid: int, name: str = "jobs") -> Path:
    """Where local jobs' folders (or deployments', `name`) go: under var/, unless they
    run as uids of their own (a root studio) that cannot pass through the folders above
    var/ (a checkout in /root or in a 0750 home): then under /var/lib/kstudio, one folder
    per studio."""
    if explicit := env_str(f"STUDIO_{name.upper()}_DIR"):
        return Path(explicit).resolve()
    passable = all(folder.stat().st_mode & 0o001 for folder in var_dir.parents)
    if euid != 0 or passable:
        return var_dir / name
    studio = hashlib.sha256(str(var_dir).encode()).hexdigest()[:12]
    return Path("/var/lib/kstudio") / studio / name


STUDIO_JOBS_DIR = jobs_dir(VAR_DIR, os.geteuid())
# What jobs bring (code snapshots, uploaded inputs): any Django storage backend, with its
# options as JSON (say storages.backends.s3.S3Storage and {"bucket_name": ...}).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": {
        "BACKEND": env_str(
            "STUDIO_ARTIFACTS_BACKEND", "django.core.files.storage.FileSystemStorage"
        ),
        "OPTIONS": json.loads(env_str("STUDIO_ARTIFACTS_OPTIONS", "{}"))
        or {"location": str(VAR_DIR / "artifacts")},
    },
}
# Each workspace's default datastore (workspaceblobstore) until IT-ops points it elsewhere.
STUDIO_DATASTORES_DIR = env_path("STUDIO_DATASTORES_DIR", VAR_DIR / "datastores")
# Virtual environments built for jobs' conda files, one per content, reused.
STUDIO_ENVIRONMENTS_DIR = env_path("STUDIO_ENVIRONMENTS_DIR", VAR_DIR / "environments")
# Curated environments (stand-ins) on the local compute: run in the host's Python (default),
# or install their package sets (1) like any conda file.
STUDIO_LOCAL_CURATED = env_bool("STUDIO_LOCAL_CURATED", False)
# How often a job's CPU, memory and GPUs are logged to its MLflow run (0: never).
STUDIO_SYSTEM_METRICS_SECONDS = env_float("STUDIO_SYSTEM_METRICS_SECONDS", 10.0)
STUDIO_CANCEL_GRACE_SECONDS = env_int("STUDIO_CANCEL_GRACE_SECONDS", 10)
# How many jobs one controller runs at once; more wait in Queued.
STUDIO_MAX_RUNNING_JOBS = env_int("STUDIO_MAX_RUNNING_JOBS", max(4, 2 * (os.cpu_count() or 1)))
STUDIO_PUBLIC_URL = env_str("STUDIO_PUBLIC_URL", "")
# Fernet keys for credentials at rest (studio/crypto.py), newest first; derived from
# SECRET_KEY when unset.
STUDIO_ENCRYPTION_KEYS = env_list("STUDIO_ENCRYPTION_KEYS", [])
# The image of a Kubernetes job whose environment names none (it needs python3, 3.8+).
STUDIO_KUBERNETES_IMAGE = env_str("STUDIO_KUBERNETES_IMAGE", "python:3.11-slim")
# The studio's own image (the Dockerfile at the top of the repository), which the inference
# router inside a cluster runs; IT-ops builds it and pushes it where the cluster pulls.
STUDIO_ROUTER_IMAGE = env_str("STUDIO_ROUTER_IMAGE", "kubestudio:latest")

# -- What a local job may touch (see README, "Local compute isolation") ---------------------
# When the studio runs as root, each local job runs as uid STUDIO_JOB_UID_BASE + its id
# (0: as the studio's own user). Its environment is this allow-list plus its own variables.
STUDIO_JOB_UID_BASE = env_int("STUDIO_JOB_UID_BASE", 1_000_000_000)
# What `python` means in a local job (default: the first python3 on PATH the job can run).
STUDIO_JOB_PYTHON = env_str("STUDIO_JOB_PYTHON")
# Online endpoints on the local compute: each instance's folder, and the interpreter that
# runs the model server (default: the studio's own).
STUDIO_DEPLOYMENTS_DIR = jobs_dir(VAR_DIR, os.geteuid(), "deployments")
# When the studio runs as root, a local deployment's model servers run as uid
# STUDIO_DEPLOYMENT_UID_BASE + its id (0: as the studio's own user), as jobs do.
STUDIO_DEPLOYMENT_UID_BASE = env_int("STUDIO_DEPLOYMENT_UID_BASE", 2_000_000_000)
STUDIO_DEPLOYMENT_PYTHON = env_str("STUDIO_DEPLOYMENT_PYTHON")
# Autoscaling (target_utilization): polls in a row one replica fewer would have done
# before a deployment shrinks; and how long the router's per-second counts are kept.
STUDIO_SCALE_DOWN_POLLS = env_int("STUDIO_SCALE_DOWN_POLLS", 20)
STUDIO_TRAFFIC_KEEP_SECONDS = env_int("STUDIO_TRAFFIC_KEEP_SECONDS", 3600)
# How many of a deployment's latest log lines are kept (endpoints.logs).
STUDIO_DEPLOYMENT_LOG_LINES = env_int("STUDIO_DEPLOYMENT_LOG_LINES", 20000)
# ...and how many a second each keeps at most (a busy model server logs every request).
STUDIO_DEPLOYMENT_LOG_RATE = env_int("STUDIO_DEPLOYMENT_LOG_RATE", 100)
# How long a deployment's preparation (its files, its environment's packages) may take.
STUDIO_DEPLOYMENT_PREPARE_SECONDS = env_int("STUDIO_DEPLOYMENT_PREPARE_SECONDS", 1800)
# The router's external base URL, as endpoints' scoring URIs show it (default: the
# studio's own address).
STUDIO_INFERENCE_URL = env_str("STUDIO_INFERENCE_URL")
# Managed deployments name Azure VM sizes: the instance type each one runs as here. IT-ops
# keep the table (STUDIO_VM_SIZES, JSON); a size not in it is refused with the list.
STUDIO_VM_SIZES = json.loads(
    env_str("STUDIO_VM_SIZES", "")
    or '{"Standard_DS2_v2": "defaultinstancetype", "Standard_DS3_v2": "defaultinstancetype",'
    ' "Standard_F2s_v2": "defaultinstancetype", "Standard_F4s_v2": "defaultinstancetype"}'
)
STUDIO_JOB_ENV_PASSTHROUGH = [
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    *env_list("STUDIO_JOB_ENV_PASSTHROUGH", []),
]

# -- Bounds on what users send and jobs produce ----------------------------------------------
MiB = 1024 * 1024
# A request body that is not an upload (a job document, a form): 413 beyond it.
STUDIO_MAX_REQUEST_BYTES = env_int("STUDIO_MAX_REQUEST_BYTES", 2 * MiB)
# A whole multipart submission (code archive and input files): 413 beyond it.
STUDIO_MAX_UPLOAD_BYTES = env_int("STUDIO_MAX_UPLOAD_BYTES", 2048 * MiB)
STUDIO_MAX_ARCHIVE_MEMBERS = env_int("STUDIO_MAX_ARCHIVE_MEMBERS", 20_000)
STUDIO_MAX_ARCHIVE_BYTES = env_int("STUDIO_MAX_ARCHIVE_BYTES", 4096 * MiB)
STUDIO_MAX_DOWNLOAD_BYTES = env_int("STUDIO_MAX_DOWNLOAD_BYTES", 4096 * MiB)
STUDIO_MAX_LOG_BYTES = env_int("STUDIO_MAX_LOG_BYTES", 100 * MiB)
# Networks that http(s) inputs may come from although they are not public (CIDR list).
STUDIO_ALLOWED_INPUT_NETWORKS = env_list("STUDIO_ALLOWED_INPUT_NETWORKS", [])
# Threads per web process serving pages and the API. More threads than this fight over
# the GIL: on 2 cores, 2-4 gave the most submissions per second (bench/submissions.py).
STUDIO_WEB_THREADS = env_int("WEB_THREADS", 4)
# How often an open socket checks that its user may still see what it shows (a change
# made through the studio is acted on at once; this catches the rest).
STUDIO_WS_RECHECK_SECONDS = env_int("STUDIO_WS_RECHECK_SECONDS", 10)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Plotly's JavaScript from the plotly package itself (no CDN): /static/plotly/plotly.min.js.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("plotly", Path(importlib.util.find_spec("plotly").origin).parent / "package_data"),  # type: ignore[union-attr,arg-type]
]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
DATA_UPLOAD_MAX_MEMORY_SIZE = STUDIO_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * MiB
# Stored files (the artifact store on disk) are the studio's alone, whatever the umask says.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "studio.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "studio.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "studio.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "studio.api.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "sign_in_address": env_str("STUDIO_SIGN_IN_RATE_PER_ADDRESS", "30/min"),
        "sign_in_username": env_str("STUDIO_SIGN_IN_RATE_PER_USERNAME", "10/min"),
        "tokens": env_str("STUDIO_TOKEN_RATE", "30/hour"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "KubeStudio API",
    "DESCRIPTION": "Workspaces, compute targets, instance types, jobs and your API tokens. "
    "Send `Authorization: Bearer <token>`; create tokens on your profile page.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# One line per HTTP request (uvicorn's access log); websocket handshakes at debug.
STUDIO_ACCESS_LOG = env_bool("STUDIO_ACCESS_LOG", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # Azure's SDK logs every request and response at INFO; its warnings are enough.
    "loggers": {"azure": {"level": "WARNING"}},
}

X_FRAME_OPTIONS = "DENY"
# Behind TLS (directly or through a proxy that sets X-Forwarded-Proto), say so.
if env_bool("STUDIO_HTTPS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
