"""One configuration surface for every binary.

Each setting is a field of a pydantic model. The same field is

* a command-line flag:        ``max_sessions``  ->  ``--max-sessions``
* an environment variable:    ``max_sessions``  ->  ``CUVIS_MAX_SESSIONS``
* a Helm value:               ``max_sessions``  ->  ``maxSessions`` (the chart renders it into the env var)

Precedence: flag > environment > default. ``python -m cuvis_cluster.common.settings`` prints the
table of names, which the chart's policy test compares against the rendered manifests.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CUVIS_"
# Environment names earlier releases read, by role: the new spelling, or None where the setting is gone.
RETIRED_ENV: dict[str, dict[str, str | None]] = {
    "gateway": {
        "CUVIS_GATEWAY_LOOP": "CUVIS_EVENT_LOOP (--event-loop, Helm value eventLoop)",
        "CUVIS_TOUCH_INTERVAL_SECONDS": None,  # the workers' heartbeats keep route TTLs
    },
}
ONE_GIB = 1 << 30
# Protobuf cannot represent a message of 2 GiB or more; refuse limits past that.
PROTOBUF_HARD_LIMIT = (1 << 31) - 1
KIB, MIB = 1 << 10, 1 << 20
# HTTP/2 bounds (RFC 9113): windows up to 2^31-1, frames between 16 KiB and 2^24-1 bytes.
H2_MAX_WINDOW = (1 << 31) - 1
H2_MIN_FRAME, H2_MAX_FRAME = 1 << 14, (1 << 24) - 1


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def helm_name(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


class _Base(BaseSettings):
    """Settings shared by the gateway and the worker."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    role: ClassVar[str] = "server"

    listen: str = Field("127.0.0.1:50051", description="HOST:PORT the gRPC server binds to.")
    metrics_port: int = Field(0, ge=0, le=65535, description="HTTP port for Prometheus /metrics (0 = off).")
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics HTTP server binds to.")
    max_message_bytes: int = Field(
        ONE_GIB, gt=0, le=PROTOBUF_HARD_LIMIT, description="Largest gRPC message accepted or sent, in bytes."
    )
    grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight calls and streams may run before exit."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    tls_cert: Path | None = Field(None, description="PEM server certificate; enables TLS.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."
    )
    redis_url: str | None = Field(None, description="redis:// or rediss:// URL of the routing store.")
    cluster_token_file: Path | None = Field(
        None,
        description="File of cluster credentials, one per line. Gateways send the first; workers accept "
        "any line and then serve only calls that carry one (their control RPCs always need one).",
    )

    @field_validator("listen")
    @classmethod
    def _check_hostport(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def names(cls) -> list[tuple[str, str, str, str]]:
        """(field, flag, env var, helm value) for every setting."""
        return [(f, flag_name(f), env_name(f), helm_name(f)) for f in cls.model_fields]

    @classmethod
    def env_names(cls) -> set[str]:
        return {env_name(f) for f in cls.model_fields}

    @classmethod
    def argument_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=prog,
            description=description,
            epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<NAME>.",
        )
        for name, info in cls.model_fields.items():
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
            help_text = (info.description or "").replace("%", "%%")
            default = info.get_default(call_default_factory=True)
            kwargs["help"] = f"{help_text} [env {env_name(name)}; default {default!r}]"
            annotation = info.annotation
            if annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif get_origin(annotation) is list:
                kwargs["action"] = "append"
            elif get_origin(annotation) is Literal:
                kwargs["choices"] = list(get_args(annotation))
            parser.add_argument(flag_name(name), **kwargs)
        return parser

    @classmethod
    def from_args(cls, argv: list[str] | None = None, *, prog: str, description: str):
        parser = cls.argument_parser(prog, description)
        namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
        for name, replacement in RETIRED_ENV.get(cls.role, {}).items():
            if name not in os.environ:
                continue
            if replacement is None:  # removed: it had no effect, so running on is safe
                print(f"{prog}: warning: {name} is no longer a setting and is ignored", file=sys.stderr)
            else:  # renamed: ignoring it would silently change behaviour
                parser.error(f"{name} was renamed {replacement}; set that instead")
        try:
            return cls(**vars(namespace))
        except Exception as exc:  # pydantic.ValidationError: show it like an argparse error
            parser.error(str(exc))


class WorkerSettings(_Base):
    """``cuvis-worker``: hosts sessions and runs pipelines on one device."""

    role: ClassVar[str] = "worker"

    advertise: str | None = Field(
        None, description="HOST:PORT under which gateways reach this worker (default: the listen address)."
    )
    configs_dir: Path = Field(
        Path("configs"),
        description="Root of the bundled Hydra configs (pipeline/, trainrun/, data/, training/).",
    )
    data_dir: Path = Field(Path("data"), description="Root under which server-side data files may be read.")
    output_dir: Path = Field(
        Path("outputs"), description="Root under which pipelines and train runs are written."
    )
    plugin_dirs: list[Path] = Field(
        default_factory=list, description="Allow-listed roots from which plugins may be loaded (repeatable)."
    )
    extra_roots: list[Path] = Field(
        default_factory=list, description="Further directories that sessions may add to their search paths."
    )
    class_packages: list[str] = Field(
        default_factory=lambda: ["cuvis_ai"],
        description="Top-level packages whose cuvis_ai_core Node subclasses a pipeline may name by "
        "class_name (repeatable); plugin classes come from plugin_dirs.",
    )
    max_sessions: int = Field(16, ge=1, description="Sessions this worker holds at most.")
    idle_timeout_seconds: float = Field(3600.0, gt=0, description="A session unused this long is closed.")
    reap_interval_seconds: float = Field(30.0, gt=0, description="How often idle sessions are looked for.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device; auto picks CUDA when present."
    )
    heartbeat_seconds: float = Field(2.0, gt=0, description="Registration heartbeat period in Redis.")
    heartbeat_ttl_seconds: float = Field(
        6.0, gt=0, description="A worker whose heartbeat is older than this is considered lost."
    )
    max_workers: int = Field(16, ge=1, description="Threads serving RPCs.")
    standalone: bool = Field(
        False,
        description="Serve clients directly, with no gateway in front: calls without the cluster "
        "credential are accepted as anonymous (their owner metadata is ignored); control RPCs still need it.",
    )

    @property
    def advertised_address(self) -> str:
        return self.advertise or self.listen


class GatewaySettings(_Base):
    """``cuvis-gateway``: stateless session-affine router in front of the workers."""

    role: ClassVar[str] = "gateway"

    listen: str = Field("127.0.0.1:50050", description="HOST:PORT the gateway binds to.")
    auth_token_file: Path | None = Field(
        None, description="File of 'token identity' lines; when set, clients must send a bearer token."
    )
    worker_tls_ca: Path | None = Field(
        None, description="CA bundle to verify workers (enables gateway->worker TLS)."
    )
    worker_tls_cert: Path | None = Field(None, description="Client certificate presented to workers.")
    worker_tls_key: Path | None = Field(None, description="Key of worker_tls_cert.")
    worker_tls_server_name: str | None = Field(
        None, description="Server name expected in worker certificates (default: the worker host)."
    )
    heartbeat_ttl_seconds: float = Field(
        6.0, gt=0, description="A worker whose heartbeat is older than this is considered lost."
    )
    route_cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a session route is cached in the gateway before Redis is asked again.",
    )
    idle_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a lost worker's sessions are reported as lost; matches the workers'.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="Event loop: uvloop (the standard asyncio loop when uvloop is not installed) or asyncio.",
    )
    max_sessions_per_identity: int = Field(
        8,
        ge=0,
        description="Sessions one client identity may hold at once across the cluster (0 = no limit).",
    )
    identity_capacity_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the cluster's session capacity (the workers' max_sessions summed) that one "
        "identity may hold; at least one session.",
    )
    worker_connect_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long opening a connection to a worker may take before it counts as failed.",
    )
    worker_keepalive_seconds: float = Field(
        1.0,
        ge=0.5,  # workers send GOAWAY "too_many_pings" below this (common/serving.py)
        description="Interval of the HTTP/2 PINGs the gateway sends on each worker connection "
        "with calls open.",
    )
    worker_keepalive_timeout_seconds: float = Field(
        3.0,
        gt=0,
        description="A worker that leaves a PING unanswered this long is declared lost and its calls fail.",
    )
    # The gateway's HTTP/2 engine, for client and worker connections alike (gateway/h2frames.H2Limits).
    http2_max_connections: int = Field(
        10000,
        ge=1,
        description="Client connections the gateway holds at once; further ones are closed at accept.",
    )
    http2_handshake_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a new client connection has for its TLS handshake, HTTP/2 preface "
        "and first SETTINGS.",
    )
    http2_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to finish a header block it started (HEADERS + CONTINUATION).",
    )
    http2_idle_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="A client connection with no call open this long is closed with GOAWAY.",
    )
    http2_keepalive_seconds: float = Field(
        30.0,
        gt=0,
        description="Interval of the HTTP/2 PINGs the gateway sends to a client whose connection is quiet.",
    )
    http2_keepalive_timeout_seconds: float = Field(
        20.0, gt=0, description="A client that leaves a PING unanswered this long is disconnected."
    )
    http2_slow_reader_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A client that reads nothing while the gateway has data buffered for it "
        "this long is disconnected.",
    )
    http2_abuse_window_seconds: float = Field(
        10.0, gt=0, description="Window over which a connection's resets and control frames are counted."
    )
    http2_max_resets_per_window: int = Field(
        200,
        ge=1,
        description="Streams a client may reset (or have refused) per window before "
        "GOAWAY ENHANCE_YOUR_CALM.",
    )
    http2_max_control_frames_per_window: int = Field(
        1000,
        ge=1,
        description="SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty and unknown frames a client may send per "
        "window before GOAWAY ENHANCE_YOUR_CALM.",
    )
    http2_max_control_queue_bytes: int = Field(
        256 * KIB,
        ge=4 * KIB,
        le=64 * MIB,
        description="Control frames (acks, resets) queued for a client that does not read; "
        "past it, disconnect.",
    )
    http2_stream_window_bytes: int = Field(
        16 * MIB,
        ge=65535,
        le=H2_MAX_WINDOW,
        description="HTTP/2 receive window of each stream: bytes a peer may send ahead on one call.",
    )
    http2_connection_window_bytes: int = Field(
        64 * MIB,
        ge=65535,
        le=H2_MAX_WINDOW,
        description="HTTP/2 receive window of each connection: bytes a peer may send ahead on all calls.",
    )
    http2_max_frame_bytes: int = Field(
        1 * MIB,
        ge=H2_MIN_FRAME,
        le=H2_MAX_FRAME,
        description="Largest HTTP/2 frame payload accepted (advertised as SETTINGS_MAX_FRAME_SIZE).",
    )
    http2_max_header_list_bytes: int = Field(
        64 * KIB,
        ge=4 * KIB,
        le=16 * MIB,
        description="Largest decoded header list of a call (advertised as SETTINGS_MAX_HEADER_LIST_SIZE).",
    )
    http2_max_header_block_bytes: int = Field(
        1 * MIB,
        ge=16 * KIB,
        le=64 * MIB,
        description="Largest encoded header block (HEADERS plus CONTINUATION frames) accepted.",
    )
    http2_max_concurrent_streams: int = Field(
        1000,
        ge=1,
        le=H2_MAX_WINDOW,
        description="Calls a client may run at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).",
    )
    http2_write_high_water_bytes: int = Field(
        4 * MIB,
        ge=64 * KIB,
        le=1 << 30,
        description="Bytes buffered for sending on a connection above which the gateway stops sending DATA.",
    )
    http2_write_low_water_bytes: int = Field(
        1 * MIB,
        ge=0,
        le=1 << 30,
        description="Buffered bytes below which sending resumes (at most the high-water mark).",
    )
    http2_read_buffer_bytes: int = Field(
        1 * MIB,
        ge=64 * KIB,
        le=1 << 30,
        description="Size of one receive buffer (slab); DATA is forwarded as views of these buffers.",
    )
    http2_min_read_bytes: int = Field(
        64 * KIB,
        ge=4 * KIB,
        le=64 * MIB,
        description="Room each socket read gets at least; less left in a buffer starts a new one.",
    )
    http2_pooled_buffers: int = Field(
        32,
        ge=0,
        le=4096,
        description="Idle receive buffers kept for reuse (memory held: this times the read buffer size).",
    )

    @model_validator(mode="after")
    def _check_http2(self) -> GatewaySettings:
        if self.http2_write_low_water_bytes > self.http2_write_high_water_bytes:
            raise ValueError("http2_write_low_water_bytes must not exceed http2_write_high_water_bytes")
        if self.http2_min_read_bytes > self.http2_read_buffer_bytes:
            raise ValueError("http2_min_read_bytes must not exceed http2_read_buffer_bytes")
        return self


class ProbeSettings(BaseSettings):
    """The server settings that ``python -m cuvis_cluster.deploy.healthcheck`` reads in a container.

    The same ``CUVIS_*`` variables as the server's own (any other is ignored, and nothing else is
    validated, so a probe never fails on a setting it does not need); empty values count as unset.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    listen: str = Field(default="127.0.0.1:50051", description="HOST:PORT the server binds to.")
    tls_cert: Path | None = Field(
        default=None, description="The server's PEM certificate (TLS is on when set)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="Client CA of the server (mTLS is on when set)."
    )


def main() -> None:
    rows = []
    for cls in (GatewaySettings, WorkerSettings):
        for field, flag, env, helm in cls.names():
            rows.append(f"{cls.role:8} {field:24} {flag:28} {env:32} {helm}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
    os._exit(0)
