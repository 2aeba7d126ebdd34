"""Python SDK for cuvis-ai-cluster (``cuvis_ai.v1.CuvisAIService`` behind the gateway).

Quick start::

    from cuvis_cluster.client import connect, format_progress

    with connect("127.0.0.1:50050") as client, client.create_session() as session:
        session.configure_trainrun("rx_statistical", ["data.batch_size=2"])
        for progress in session.train("statistical"):
            print(format_progress(progress))
        result = session.infer(cube, wavelengths)
        name, scores = result.scores()

Everything a user needs is re-exported here; the underscored modules are implementation.

* :func:`connect` -> :class:`Client`: TLS/mTLS, bearer tokens, 1 GiB messages, keepalive, and retries of
  idempotent calls on UNAVAILABLE through the gRPC service config (:class:`RetryPolicy`).
* :mod:`cuvis_cluster.client.aio`: the same client for asyncio (``aio.connect`` takes the same arguments).
* :class:`Session`: a context manager that closes the session on exit, with the workflow helpers
  (``configure_trainrun``, ``train`` with a progress bar and early stopping, ``infer`` from numpy, .npz or
  .cu3s).
* :func:`numpy_to_proto`, :func:`proto_to_numpy`, :func:`tensor_to_proto`: the shared tensor codec.
* Failed calls raise :mod:`cuvis_cluster.errors` exceptions carrying ``code``, ``details`` and ``method``.
"""

from __future__ import annotations

from pathlib import Path

from cuvis_cluster import errors
from cuvis_cluster.client._channel import (
    DEFAULT_ADDRESS,
    IDEMPOTENT_METHODS,
    MAX_MESSAGE_SIZE,
    RETRY_EXCLUDED,
    KeepAliveOptions,
    RetryPolicy,
    build_config,
    default_address,
)
from cuvis_cluster.client._client import CallHandle, Client, Session, TrainStream
from cuvis_cluster.client._core import DEFAULT_TIMEOUT
from cuvis_cluster.client._errors import ServerError, status_code
from cuvis_cluster.client._inputs import Frames
from cuvis_cluster.client._inputs import read_file as read_inputs
from cuvis_cluster.client._progress import format_progress
from cuvis_cluster.client._results import InferenceResult
from cuvis_cluster.wire.codec import numpy_to_proto, proto_to_numpy, tensor_to_proto
from cuvis_cluster.wire.pb import pb


def connect(
    address: str | None = None,
    *,
    tls: bool | None = None,
    root_certificates: bytes | str | Path | None = None,
    client_certificate: bytes | str | Path | None = None,
    client_key: bytes | str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    keepalive: KeepAliveOptions | None = None,
    retry: RetryPolicy | bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    options: list[tuple[str, object]] | tuple[()] = (),
) -> Client:
    """Open a channel to a gateway (or a single worker) and return a :class:`Client`.

    Parameters
    ----------
    address:
        ``HOST:PORT``; default ``$CUVIS_ADDRESS`` or ``127.0.0.1:50050``. A ``grpcs://`` prefix turns TLS
        on, ``grpc://`` off.
    tls:
        Use TLS. ``None`` (default): on when the address scheme says so or any certificate or
        ``server_name`` is given.
    root_certificates:
        PEM CA bundle (bytes or a file path) that signed the server certificate. Default with TLS: the
        system's CA bundle, else the roots bundled with grpc.
    client_certificate, client_key:
        PEM certificate chain and key (bytes or file paths) for mTLS.
    server_name:
        Expected name in the server certificate when it differs from the address host (TLS only).
    token:
        Bearer token sent as ``authorization: Bearer <token>`` on every call (as call credentials with
        TLS; as plain metadata otherwise, with a warning unless the address is loopback).
    max_message_size:
        Largest message sent or received, both ways; default 1 GiB like the servers.
    keepalive:
        :class:`KeepAliveOptions`; default off.
    retry:
        :class:`RetryPolicy`, ``True`` for the default policy, ``False`` for no automatic retries.
        Only :data:`IDEMPOTENT_METHODS` are ever retried, and only on UNAVAILABLE.
    timeout:
        Default deadline of quick calls in seconds (``None`` = none); long calls (Train, Inference,
        loading and saving) have none by default. Every method also takes ``timeout=``.
    options:
        Extra ``grpc`` channel options, appended last.
    """
    config = build_config(
        address,
        tls=tls,
        root_certificates=root_certificates,
        client_certificate=client_certificate,
        client_key=client_key,
        server_name=server_name,
        token=token,
        max_message_size=max_message_size,
        keepalive=keepalive,
        retry=retry,
        options=options,
    )
    return Client(config, timeout=timeout)


__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "MAX_MESSAGE_SIZE",
    "RETRY_EXCLUDED",
    "CallHandle",
    "Client",
    "Frames",
    "InferenceResult",
    "KeepAliveOptions",
    "RetryPolicy",
    "ServerError",
    "Session",
    "TrainStream",
    "connect",
    "default_address",
    "errors",
    "format_progress",
    "numpy_to_proto",
    "pb",
    "proto_to_numpy",
    "read_inputs",
    "status_code",
    "tensor_to_proto",
]
