"""Building the gRPC channel: limits, TLS/mTLS, bearer tokens, keepalive and the retry service config.

Everything a channel needs is decided here, once, with named defaults, so that the rest of the SDK never
touches channel options. The sync and asyncio ``connect`` both go through :func:`build_config` and
:class:`ChannelConfig`, which creates either kind of channel, and :func:`create_stubs`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import ssl
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cuvis_cluster.wire import fastwire
from cuvis_cluster.wire.pb import (
    CLUSTER_STATUS_SERVICE_NAME,
    SERVICE_NAME,
    WORKER_CONTROL_SERVICE_NAME,
    control_pb2_grpc,
    pb,
    pb_grpc,
)

log = logging.getLogger(__name__)

#: Largest message sent or received, in bytes. Kept equal to the servers' default ``max_message_bytes``
#: (1 GiB; hyperspectral cubes are 100-600 MB). Protobuf itself cannot go past 2 GiB - 1.
MAX_MESSAGE_SIZE = 1 << 30

#: Calls that change nothing on the server, so that repeating one after UNAVAILABLE is always safe.
#: Only these are retried by the channel's service config. ``Train`` and ``CreateSession`` are never in
#: here: a repeated Train would silently start a second run, a repeated CreateSession would leak a session.
#: ``Inference`` is not in here either (see :data:`RETRY_EXCLUDED`).
IDEMPOTENT_METHODS: frozenset[str] = frozenset(
    {
        "ListAvailablePipelines",
        "GetPipelineInfo",
        "ResolveConfig",
        "GetParameterSchema",
        "ValidateConfig",
        "GetTrainingCapabilities",
        "GetPipelineInputs",
        "GetPipelineOutputs",
        "GetTrainStatus",
        "ListLoadedPlugins",
        "GetPluginInfo",
        "ListAvailableNodes",
        "GetProfilingSummary",
        "GetPipelineVisualization",
    }
)

#: Why the remaining RPCs are not retried automatically (documented in docs/troubleshooting.md).
RETRY_EXCLUDED: dict[str, str] = {
    "Train": "a retry would start a second training run; the stream ends UNAVAILABLE instead",
    "CreateSession": "a retry after a lost reply would open a second session that nobody closes",
    "RestoreTrainRun": "without a session id it opens a new session, like CreateSession",
    "CloseSession": "a second close of the same id is NOT_FOUND, hiding the first close's success",
    "Inference": (
        "gRPC can only retry requests it still buffers (256 KiB per call by default), so a cube-sized "
        "request would be retried or not depending on its size; call it again yourself on Unavailable"
    ),
    "SetSessionSearchPaths": "with append=true a repeat adds the paths twice",
    "StopTrain": "it acts on whatever run is current when it arrives",
}

#: Used when neither an argument nor ``CUVIS_ADDRESS`` names one (a local ``cuvis-cluster up``).
DEFAULT_ADDRESS = "127.0.0.1:50050"


def default_address() -> str:
    """``$CUVIS_ADDRESS`` or :data:`DEFAULT_ADDRESS`."""
    return os.environ.get("CUVIS_ADDRESS") or DEFAULT_ADDRESS


# Internal read-only status RPCs that are also safe to repeat.
_INTERNAL_IDEMPOTENT = {
    CLUSTER_STATUS_SERVICE_NAME: ("ListWorkers",),
    WORKER_CONTROL_SERVICE_NAME: ("GetWorkerStatus",),
}


@dataclass(frozen=True)
class KeepAliveOptions:
    """HTTP/2 keepalive pings. Off by default, as in grpc itself.

    Turn them on when long ``Train`` streams cross load balancers or NAT that drop idle connections. The
    server must allow pings at least this often (``grpc.http2.min_ping_interval_without_data_ms``), or it
    answers with GOAWAY ``too_many_pings``.

    Attributes
    ----------
    time_s:
        Seconds between pings; ``None`` disables keepalive.
    timeout_s:
        Seconds to wait for a ping acknowledgement before the connection is considered dead.
    permit_without_calls:
        Also ping while no call is open.
    """

    time_s: float | None = None
    timeout_s: float = 20.0
    permit_without_calls: bool = False

    def channel_options(self) -> list[tuple[str, int]]:
        if self.time_s is None:
            return []
        return [
            ("grpc.keepalive_time_ms", int(self.time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            # A Train stream sends no data upstream after its request; without this the client would
            # stop pinging after two pings.
            ("grpc.http2.max_pings_without_data", 0),
        ]


@dataclass(frozen=True)
class RetryPolicy:
    """Transparent retries of idempotent calls on UNAVAILABLE, done by grpc core via the service config.

    Attributes
    ----------
    max_attempts:
        Attempts including the first (grpc caps this at 5).
    initial_backoff_s, max_backoff_s, backoff_multiplier:
        Exponential backoff between attempts (grpc randomises each delay up to the current backoff).
    wait_for_ready:
        Retried methods wait for the channel to (re)connect instead of failing at once while it is
        down, so a call made during a gateway restart completes once the gateway is back, within its
        timeout. Other methods fail fast with UNAVAILABLE.
    methods:
        ``CuvisAIService`` method names to retry; default :data:`IDEMPOTENT_METHODS`.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    wait_for_ready: bool = True
    methods: frozenset[str] = field(default=IDEMPOTENT_METHODS)

    def __post_init__(self) -> None:
        bad = sorted(set(self.methods) & {"Train", "CreateSession"})
        if bad:
            raise ValueError(f"{', '.join(bad)} must never be retried automatically")
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be between 2 and 5 (grpc's limit)")

    def service_config(self) -> str:
        names: list[dict[str, str]] = [{"service": SERVICE_NAME, "method": m} for m in sorted(self.methods)]
        for service, methods in _INTERNAL_IDEMPOTENT.items():
            names.extend({"service": service, "method": m} for m in methods)
        method_config = {
            "name": names,
            "waitForReady": self.wait_for_ready,
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                "maxBackoff": f"{self.max_backoff_s:.3f}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
        return json.dumps({"methodConfig": [method_config]}, separators=(",", ":"))


def _read(value: bytes | str | Path | None, what: str) -> bytes | None:
    """PEM material given as bytes, or as a path to read."""
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc


def system_root_certificates() -> bytes | None:
    """The operating system's CA bundle, or ``None`` to use the roots bundled with grpc."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            try:
                return Path(candidate).read_bytes()
            except OSError:
                continue
    return None


def split_address(address: str) -> tuple[str, bool | None]:
    """Strip an optional ``grpc://``/``grpcs://`` scheme; the scheme decides TLS when present."""
    for scheme, tls in (("grpcs://", True), ("https://", True), ("grpc://", False), ("http://", False)):
        if address.startswith(scheme):
            return address[len(scheme) :].rstrip("/"), tls
    return address, None


def is_loopback(address: str) -> bool:
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ChannelConfig:
    """Everything :func:`~cuvis_cluster.client.connect` turns into a channel."""

    address: str
    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None
    token: str | None = None
    max_message_size: int = MAX_MESSAGE_SIZE
    keepalive: KeepAliveOptions = field(default_factory=KeepAliveOptions)
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    extra_options: Sequence[tuple[str, object]] = ()

    def options(self) -> list[tuple[str, object]]:
        opts: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", self.max_message_size),
            ("grpc.max_receive_message_length", self.max_message_size),
            # Reconnect quickly after a gateway restart; grpc's defaults (1 s doubling to 120 s) leave a
            # restarted gateway unused for a long time.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        opts += self.keepalive.channel_options()
        if self.retry is not None:
            opts += [("grpc.enable_retries", 1), ("grpc.service_config", self.retry.service_config())]
        else:
            opts.append(("grpc.enable_retries", 0))
        if self.server_name:
            opts += [
                ("grpc.ssl_target_name_override", self.server_name),
                ("grpc.default_authority", self.server_name),
            ]
        opts += list(self.extra_options)
        return opts

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for every call: the bearer token on plaintext channels (TLS uses call credentials)."""
        if self.token and not self.tls:
            return (("authorization", f"Bearer {self.token}"),)
        return ()

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS (and with client certificate and key, mTLS) credentials, with the token as call credentials."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )
        if self.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return credentials

    def _warn_plaintext_token(self) -> None:
        if self.token and not self.tls and not is_loopback(self.address):
            warnings.warn(
                f"sending a bearer token to {self.address} without TLS exposes it on the network",
                stacklevel=4,
            )

    def create_channel(self) -> grpc.Channel:
        """A blocking ``grpc`` channel."""
        self._warn_plaintext_token()
        if not self.tls:
            return grpc.insecure_channel(self.address, options=self.options())
        return grpc.secure_channel(self.address, self.credentials(), options=self.options())

    def create_aio_channel(self) -> grpc.aio.Channel:
        """The same channel for ``grpc.aio`` (create it inside the event loop that will use it)."""
        self._warn_plaintext_token()
        if not self.tls:
            return grpc.aio.insecure_channel(self.address, options=self.options())
        return grpc.aio.secure_channel(self.address, self.credentials(), options=self.options())


def build_config(
    address: str | None,
    *,
    tls: bool | None = None,
    root_certificates: bytes | str | Path | None = None,
    client_certificate: bytes | str | Path | None = None,
    client_key: bytes | str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    keepalive: KeepAliveOptions | None = None,
    retry: RetryPolicy | bool | None = True,
    options: Iterable[tuple[str, object]] = (),
) -> ChannelConfig:
    """Validate the arguments of :func:`connect` and decide TLS; see there for their meaning.

    Both ``connect`` functions (sync and asyncio) pass their arguments here unchanged.
    """
    address, scheme_tls = split_address((address or default_address()).strip())
    if not address:
        raise ValueError("address must be HOST:PORT, e.g. 127.0.0.1:50050")
    if not 0 < max_message_size < (1 << 31):
        raise ValueError("max_message_size must be between 1 byte and 2 GiB - 1 (protobuf's limit)")
    if (client_certificate is None) != (client_key is None):
        raise ValueError("mTLS needs both client_certificate and client_key")
    tls_material = any(v is not None for v in (root_certificates, client_certificate, server_name))
    if tls is None:
        tls = scheme_tls if scheme_tls is not None else tls_material
    elif scheme_tls is not None and scheme_tls != tls:
        raise ValueError(f"tls={tls} contradicts the address scheme")
    if not tls and tls_material:
        raise ValueError("certificates or a server name were given but tls=False")
    roots = _read(root_certificates, "CA certificate")
    if tls and roots is None:
        roots = system_root_certificates()
    if retry is True:
        retry = RetryPolicy()
    elif retry is False:
        retry = None
    return ChannelConfig(
        address=address,
        tls=bool(tls),
        root_certificates=roots,
        client_certificate=_read(client_certificate, "client certificate"),
        client_key=_read(client_key, "client key"),
        server_name=server_name,
        token=token or None,
        max_message_size=max_message_size,
        keepalive=keepalive or KeepAliveOptions(),
        retry=retry,
        extra_options=tuple(options),
    )


# -- stubs --------------------------------------------------------------------------------------------------
#: The full gRPC name of the Inference method.
INFERENCE_METHOD = f"/{SERVICE_NAME}/Inference"


def _serialize_request(request: bytes | pb.InferenceRequest) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


class InferenceStub:
    """``Inference`` on pre-serialized request bytes, with the reply decoded zero-copy.

    The request goes out as built by :mod:`cuvis_cluster.wire.fastwire` (one copy of each array instead
    of protobuf's three) and the reply's tensors stay views on the bytes grpc received (protobuf would
    copy them twice). Same method, same wire bytes, so servers and the gateway cannot tell the difference.
    Works on blocking and ``grpc.aio`` channels alike.
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.Inference = channel.unary_unary(
            INFERENCE_METHOD,
            request_serializer=_serialize_request,
            response_deserializer=fastwire.parse_inference_response,
        )


def create_stubs(channel: grpc.Channel | grpc.aio.Channel) -> dict[str, Any]:
    """The stubs a client sends :class:`~cuvis_cluster.client._core.Call` objects through, by
    ``Call.stub`` name (blocking stubs on a blocking channel, ``grpc.aio`` ones on an aio channel)."""
    from grpc_health.v1 import health_pb2_grpc

    return {
        "service": pb_grpc.CuvisAIServiceStub(channel),
        "cluster": control_pb2_grpc.ClusterStatusServiceStub(channel),
        "worker": control_pb2_grpc.WorkerControlServiceStub(channel),
        "health": health_pb2_grpc.HealthStub(channel),
        "inference": InferenceStub(channel),
    }
