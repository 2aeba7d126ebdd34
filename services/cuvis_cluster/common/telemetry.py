"""Prometheus metrics of both servers, declared in one place, and the redaction of secrets from logs.

Dashboards, alerts and the chart tests read :data:`METRIC_NAMES` to check that every series they
use exists. Labels are bounded: method, code, role, worker address, outcome. Never a session id.

Secrets (the password in a Redis URL, bearer tokens, the cluster credential) must never reach a log
line, an error message or a metric label. :func:`redact` removes them from any text: URL userinfo
passwords and ``Bearer <token>`` by pattern, and every value passed to :func:`register_secret`
verbatim. :class:`RedactingFilter` applies it to every log record; ``configure_logging`` installs it.
"""

from __future__ import annotations

import logging
import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

MASK = "***"
# scheme://user:password@  (the user part may be empty, as in redis://:password@host)
# The password runs to the LAST "@" of the authority, as urllib and redis-py split it ("p@ss" included).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*@")
# ?password=... in a URL's query (redis-py takes the password there too)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&#\s]*", re.IGNORECASE)
# "Bearer <token>" in any case, as it would appear in a logged header or exception.
_BEARER = re.compile(r"(?P<head>\bbearer\s+)[^\s,;'\"]+", re.IGNORECASE)
# Shorter values would mask ordinary words; real credentials are longer.
MIN_SECRET_LENGTH = 4

# Longest first, so that a secret containing another one is masked whole. Replaced whole on every
# registration (under the lock), so that redact() reads it from any thread without one.
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(value: str | bytes | None) -> None:
    """Mask ``value`` wherever it appears in redacted text (logs, error messages) from now on."""
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    global _secrets
    if len(text) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            if text not in _secrets:
                _secrets = tuple(sorted({*_secrets, text}, key=len, reverse=True))


def redact_url(url: str) -> str:
    """``url`` with its password masked: ``redis://:***@host:6379/0``, ``...?password=***``."""
    url = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", url)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, url)


def redact(text: str) -> str:
    """``text`` with URL passwords, bearer tokens and every registered secret masked."""
    if not text:
        return text
    # Registered values first: a pattern that masked part of one would leave the rest unrecognisable.
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = redact_url(text)
    return _BEARER.sub(lambda m: m["head"] + MASK, text)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's final message, its traceback and its stack before any handler
    formats it. Installed on handlers (a logger's own filters do not see records that propagate)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: leave it to the handler's own error report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# Latency buckets from sub-millisecond control calls up to multi-second 600 MB inferences.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class RpcMetrics:
    """Per-RPC series that both servers export under their own prefix."""

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{prefix}_rpc_requests",
            "Finished RPCs by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{prefix}_rpc_duration_seconds",
            "RPC latency from first byte in to status out.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_rpc_in_flight", "RPCs currently being served.", ["method"], registry=registry
        )
        self.bytes_in = Counter(
            f"{prefix}_rpc_received_bytes", "Request payload bytes received.", ["method"], registry=registry
        )
        self.bytes_out = Counter(
            f"{prefix}_rpc_sent_bytes", "Response payload bytes sent.", ["method"], registry=registry
        )


class GatewayMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        super().__init__("cuvis_gateway", self.registry)
        r = self.registry
        self.info = Info("cuvis_gateway_build", "Gateway version.", registry=r)
        self.workers = Gauge("cuvis_gateway_workers", "Registered workers by state.", ["state"], registry=r)
        self.worker_sessions = Gauge(
            "cuvis_gateway_worker_sessions", "Sessions held by each live worker.", ["worker"], registry=r
        )
        self.worker_capacity = Gauge(
            "cuvis_gateway_worker_capacity", "Session capacity of each live worker.", ["worker"], registry=r
        )
        self.placement_failures = Counter(
            "cuvis_gateway_placement_failures",
            "CreateSession calls that found no worker.",
            ["reason"],
            registry=r,
        )
        self.routes_purged = Counter(
            "cuvis_gateway_routes_purged", "Session routes removed because their worker was lost.", registry=r
        )
        self.route_cache = Counter(
            "cuvis_gateway_route_lookups", "Session route lookups by source.", ["source"], registry=r
        )
        self.redis_latency = Histogram(
            "cuvis_gateway_redis_duration_seconds",
            "Redis command latency.",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "cuvis_gateway_redis_errors", "Failed Redis commands.", ["op"], registry=r
        )
        self.redis_up = Gauge("cuvis_gateway_redis_up", "1 when the last Redis call succeeded.", registry=r)


class WorkerMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        super().__init__("cuvis_worker", self.registry)
        r = self.registry
        self.info = Info("cuvis_worker_build", "Worker version and device.", registry=r)
        self.sessions = Gauge("cuvis_worker_sessions", "Sessions held by this worker.", registry=r)
        self.capacity = Gauge("cuvis_worker_session_capacity", "Maximum sessions of this worker.", registry=r)
        self.sessions_expired = Counter(
            "cuvis_worker_sessions_expired", "Sessions closed by the idle reaper.", registry=r
        )
        self.draining = Gauge("cuvis_worker_draining", "1 while the worker refuses new sessions.", registry=r)
        self.training_runs = Counter(
            "cuvis_worker_training_runs",
            "Finished training runs by trainer and outcome.",
            ["trainer", "outcome"],
            registry=r,
        )
        self.training_active = Gauge("cuvis_worker_training_active", "Training runs in progress.", registry=r)
        self.inference_latency = Histogram(
            "cuvis_worker_inference_duration_seconds",
            "Pipeline forward time of Inference, without transport.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.device_memory = Gauge(
            "cuvis_worker_device_memory_bytes",
            "Device memory by kind (allocated, reserved, free, total).",
            ["kind"],
            registry=r,
        )
        self.redis_latency = Histogram(
            "cuvis_worker_redis_duration_seconds",
            "Redis command latency.",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter("cuvis_worker_redis_errors", "Failed Redis commands.", ["op"], registry=r)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _exported_names(metrics: RpcMetrics) -> set[str]:
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names() -> set[str]:
    """Every sample name either server can export (counters end ``_total``, histograms ``_bucket`` ...)."""
    return _exported_names(GatewayMetrics()) | _exported_names(WorkerMetrics())


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Expose ``registry`` on http://host:port/metrics in a daemon thread (port 0 disables it)."""
    if port:
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise SystemExit(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        log.info("metrics on http://%s:%d/metrics", host, port)
