"""Settings read from the environment with safe defaults; tests pass a mapping instead."""
import os


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY")  # None: the factory loads or creates one in instance/
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL")  # None: SQLite in instance/
    SQLALCHEMY_ENGINE_OPTIONS: dict = {"pool_pre_ping": True}
    INBOUND_TOKEN = os.environ.get("INBOUND_TOKEN")  # None: generated once into instance/
    REDIS_URL = os.environ.get("REDIS_URL")
    # Several deployments may share one Redis: keys and Socket.IO events stay apart by these.
    CACHE_KEY_PREFIX = os.environ.get("CACHE_KEY_PREFIX", "chat:")
    SOCKETIO_CHANNEL = os.environ.get("SOCKETIO_CHANNEL", "chat-socketio")
    # Throttling (chat/throttle.py; Flask-Limiter's RATELIMIT_* settings apply as well): sign-in
    # attempts per account, refused sign-ins and refused bearer tokens per client address.
    SIGN_IN_LIMIT_PER_ACCOUNT = os.environ.get("SIGN_IN_LIMIT_PER_ACCOUNT", "5 per minute")
    SIGN_IN_LIMIT_PER_ADDRESS = os.environ.get("SIGN_IN_LIMIT_PER_ADDRESS", "20 per minute")
    TOKEN_LIMIT_PER_ADDRESS = os.environ.get("TOKEN_LIMIT_PER_ADDRESS", "20 per minute")
    # Names this deploy's static files and service worker (with their contents); ETags too.
    RELEASE = os.environ.get("RELEASE", "1")
    PAGE_SIZE = 50
    MESSAGE_PAGE_SIZE = 50
    MAX_BODY_LENGTH = 4096
    # Every body we take is small (a 4,096-character message is at most ~49 KB as JSON
    # \u escapes): anything larger is refused with 413 before it is read.
    MAX_CONTENT_LENGTH = 256 * 1024
    WTF_CSRF_TIME_LIMIT = None  # a tab left open all day must still be able to reply
    WTF_CSRF_SSL_STRICT = False
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    # Production: cookies only over HTTPS. On with PRODUCTION=1, and whenever the app says it is
    # served over https (PREFERRED_URL_SCHEME=https) or behind a proxy (PROXY_FIX=<number of proxies>,
    # which also makes Flask trust that many X-Forwarded-For/-Proto/-Host headers).
    PRODUCTION = _flag("PRODUCTION")
    PREFERRED_URL_SCHEME = os.environ.get("PREFERRED_URL_SCHEME", "http")
    PROXY_FIX = int(os.environ.get("PROXY_FIX") or 0)
    # /metrics: open unless one of these is set; then a scraper needs the bearer token or an
    # address in the allow-list (comma-separated addresses or networks, e.g. 10.0.0.0/8,::1).
    METRICS_TOKEN = os.environ.get("METRICS_TOKEN")
    METRICS_ALLOW = os.environ.get("METRICS_ALLOW", "")


def normalise_database_url(url: str) -> str:
    """Accept the usual postgres:// spellings and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
