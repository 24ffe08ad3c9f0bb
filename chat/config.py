"""Settings read from the environment with safe defaults; tests pass a mapping instead."""
import os
import urllib.parse
from typing import NamedTuple


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY")  # None: the factory loads or creates one in instance/
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL")  # None: SQLite in instance/
    SQLALCHEMY_ENGINE_OPTIONS: dict = {"pool_pre_ping": True}
    INBOUND_TOKEN = os.environ.get("INBOUND_TOKEN")  # None: generated once into instance/
    # redis://host:6379/0, or a Redis Cluster: redis+cluster://host1:port1,host2:port2 (check_redis_url)
    REDIS_URL = os.environ.get("REDIS_URL")
    # Several deployments may share one Redis: keys and Socket.IO events stay apart by these.
    CACHE_KEY_PREFIX = os.environ.get("CACHE_KEY_PREFIX", "chat:")
    SOCKETIO_CHANNEL = os.environ.get("SOCKETIO_CHANNEL", "chat-socketio")
    if "SOCKETIO_MESSAGE_QUEUE" in os.environ:  # push through another Redis than REDIS_URL's
        SOCKETIO_MESSAGE_QUEUE = os.environ["SOCKETIO_MESSAGE_QUEUE"] or None
    # Throttling (chat/throttle.py; Flask-Limiter's RATELIMIT_* settings apply as well): sign-in
    # attempts per account, refused sign-ins and refused bearer tokens per client address.
    SIGN_IN_LIMIT_PER_ACCOUNT = os.environ.get("SIGN_IN_LIMIT_PER_ACCOUNT", "5 per minute")
    SIGN_IN_LIMIT_PER_ADDRESS = os.environ.get("SIGN_IN_LIMIT_PER_ADDRESS", "20 per minute")
    TOKEN_LIMIT_PER_ADDRESS = os.environ.get("TOKEN_LIMIT_PER_ADDRESS", "20 per minute")
    # Names this deploy's static files and service worker (with their contents); ETags too.
    RELEASE = os.environ.get("RELEASE", "1")
    # Message search (chat/search.py): PostgreSQL's text-search configuration ('simple': words as
    # written, any language; 'english', 'portuguese', ...: stemmed). Read when the index is built.
    SEARCH_LANGUAGE = os.environ.get("SEARCH_LANGUAGE", "simple")
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
    # Delivery (chat/delivery.py, chat/worker.py): a worker inside the gunicorn process
    # ("embedded", the default) or none there ("off": `flask worker` processes deliver instead).
    DELIVERY_WORKER = os.environ.get("DELIVERY_WORKER", "embedded")
    DELIVERY_CONCURRENCY = int(os.environ.get("DELIVERY_CONCURRENCY") or 4)  # sends at once per worker
    DELIVERY_POLL_SECONDS = float(os.environ.get("DELIVERY_POLL_SECONDS") or 0.5)  # other processes' replies
    DELIVERY_SEND_TIMEOUT = float(os.environ.get("DELIVERY_SEND_TIMEOUT") or 10)
    DELIVERY_LEASE_SECONDS = float(os.environ.get("DELIVERY_LEASE_SECONDS") or 60)  # > the send timeout
    # 12 attempts with the default backoff keep trying through a provider outage of 10-20 minutes.
    DELIVERY_MAX_ATTEMPTS = int(os.environ.get("DELIVERY_MAX_ATTEMPTS") or 12)
    DELIVERY_BACKOFF_BASE = float(os.environ.get("DELIVERY_BACKOFF_BASE") or 1)  # seconds, doubling
    DELIVERY_BACKOFF_MAX = float(os.environ.get("DELIVERY_BACKOFF_MAX") or 300)
    # Attachments (chat/attachments.py, chat/worker.py): a whole download's time limit, and how
    # many tries a file gets (the same backoff as deliveries). Sizes: chat/media_types.LIMITS,
    # ATTACHMENT_MAX_BYTES_<KIND> to change one; storage: chat/storage.py.
    ATTACHMENT_FETCH_SECONDS = float(os.environ.get("ATTACHMENT_FETCH_SECONDS") or 60)
    ATTACHMENT_MAX_ATTEMPTS = int(os.environ.get("ATTACHMENT_MAX_ATTEMPTS") or 5)
    # The largest file of each kind, in bytes (None: WhatsApp's own limit, chat/media_types.LIMITS).
    ATTACHMENT_MAX_BYTES_IMAGE = os.environ.get("ATTACHMENT_MAX_BYTES_IMAGE")
    ATTACHMENT_MAX_BYTES_AUDIO = os.environ.get("ATTACHMENT_MAX_BYTES_AUDIO")
    ATTACHMENT_MAX_BYTES_VIDEO = os.environ.get("ATTACHMENT_MAX_BYTES_VIDEO")
    ATTACHMENT_MAX_BYTES_DOCUMENT = os.environ.get("ATTACHMENT_MAX_BYTES_DOCUMENT")
    ATTACHMENT_MAX_BYTES_STICKER = os.environ.get("ATTACHMENT_MAX_BYTES_STICKER")
    ATTACHMENT_STORAGE = os.environ.get("ATTACHMENT_STORAGE", "disk")
    ATTACHMENT_DIR = os.environ.get("ATTACHMENT_DIR")  # None: instance/attachments
    ATTACHMENT_S3_BUCKET = os.environ.get("ATTACHMENT_S3_BUCKET")
    ATTACHMENT_S3_ENDPOINT_URL = os.environ.get("ATTACHMENT_S3_ENDPOINT_URL")
    ATTACHMENT_S3_REGION = os.environ.get("ATTACHMENT_S3_REGION")
    ATTACHMENT_S3_PREFIX = os.environ.get("ATTACHMENT_S3_PREFIX", "")
    # This inbox's address as the outside world reaches it (https://inbox.example.com): the
    # generic webhook sends the customer's system signed links to an agent's files under it,
    # valid this many days.
    PUBLIC_URL = os.environ.get("PUBLIC_URL")
    ATTACHMENT_LINK_DAYS = float(os.environ.get("ATTACHMENT_LINK_DAYS") or 7)
    # Channels from the environment, for a demo or a single-channel deployment (admin pages for
    # the rest): the generic webhook channel and the WhatsApp Cloud API channel.
    CHANNEL_WEBHOOK_URL = os.environ.get("CHANNEL_WEBHOOK_URL")
    CHANNEL_WEBHOOK_SECRET = os.environ.get("CHANNEL_WEBHOOK_SECRET")
    WHATSAPP_PHONE_NUMBER_ID = os.environ.get("WHATSAPP_PHONE_NUMBER_ID")
    WHATSAPP_ACCESS_TOKEN = os.environ.get("WHATSAPP_ACCESS_TOKEN")
    WHATSAPP_APP_SECRET = os.environ.get("WHATSAPP_APP_SECRET")
    WHATSAPP_VERIFY_TOKEN = os.environ.get("WHATSAPP_VERIFY_TOKEN")
    WHATSAPP_GRAPH_URL = os.environ.get("WHATSAPP_GRAPH_URL")
    WHATSAPP_MAX_NOTIFICATION_BYTES = 3 * 1024 * 1024  # /webhooks/whatsapp only (Meta batches updates)  # None: Meta's Graph API (channels/whatsapp.py)


def normalise_database_url(url: str) -> str:
    """Accept the usual postgres:// spellings and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEME = "redis+cluster://"  # the scheme Flask-Limiter's storage (limits) reads too


class RedisClusterURL(NamedTuple):
    """What REDIS_URL=redis+cluster://[[user]:password@]host:port,host:port names."""

    nodes: tuple[tuple[str, int], ...]  # where to start: any of them tells the client the whole cluster
    username: str | None
    password: str | None


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and url.lower().startswith(CLUSTER_SCHEME)


def check_redis_url(url: str | None) -> str | None:
    """REDIS_URL as given, or a ValueError that says what is wrong with it (at startup, before
    any client tries it)."""
    if not url:
        return None
    if is_cluster_url(url):
        parse_redis_cluster_url(url)
    elif not url.lower().startswith(REDIS_SCHEMES):
        raise ValueError(f"REDIS_URL {_without_password(url)!r}: use redis://, rediss://, unix:// "
                         f"or, for a Redis Cluster, {CLUSTER_SCHEME}host1:port1,host2:port2")
    return url


def parse_redis_cluster_url(url: str) -> RedisClusterURL:
    """redis+cluster://[[user]:password@]host1:port1,host2:port2[/0] -> its nodes and credentials."""
    shown = _without_password(url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.query or parsed.fragment:
        raise ValueError(f"REDIS_URL {shown!r}: a Redis Cluster URL takes no options after '?' or '#'")
    if parsed.path not in ("", "/", "/0"):
        raise ValueError(f"REDIS_URL {shown!r}: a Redis Cluster has database 0 only")
    hosts = parsed.netloc.rpartition("@")[2]
    nodes = []
    for location in hosts.split(","):
        host, _, port = location.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:7000
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_URL {shown!r}: name each node as host:port, comma-separated, "
                             f"as in {CLUSTER_SCHEME}10.0.0.1:7000,10.0.0.2:7000 (got {location.strip()!r})")
        nodes.append((host, int(port)))
    return RedisClusterURL(tuple(nodes), urllib.parse.unquote(parsed.username) if parsed.username else None,
                           urllib.parse.unquote(parsed.password) if parsed.password else None)


def _without_password(url: str) -> str:
    """The URL fit for an error message or a log line."""
    scheme, sep, rest = url.partition("://")
    credentials, at, hosts = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return scheme + sep + credentials + at + hosts
