"""gRPC health check for containers: the images' HEALTHCHECK and the chart's exec probes.

Run inside the container of a gateway or worker::

    python -m cuvis_cluster.deploy.healthcheck             # ready: grpc.health.v1 says SERVING
    python -m cuvis_cluster.deploy.healthcheck --mode alive  # alive: the server answers at all

Both modes call ``grpc.health.v1.Health/Check`` on the server of this container, found from the
same ``CUVIS_*`` settings the server reads (``CUVIS_LISTEN``, ``CUVIS_TLS_CERT``, ``CUVIS_TLS_KEY``,
``CUVIS_TLS_CLIENT_CA``, read through :class:`~cuvis_cluster.common.settings.ProbeSettings`):

* ``ready`` exits 0 only on SERVING. A draining worker or a gateway without Redis answers
  NOT_SERVING and is taken out of rotation.
* ``alive`` exits 0 on any answer of the health service, NOT_SERVING included: the process is up and
  its gRPC server works. Liveness must not fail when Redis is down, or Kubernetes would restart every
  pod during a Redis outage and the workers would lose their sessions.

With TLS on, the check trusts the server's own certificate (``CUVIS_TLS_CERT``) and expects the
name from that certificate, so it needs no CA of its own. With mTLS on (``CUVIS_TLS_CLIENT_CA``)
it presents the same certificate as its client certificate, which therefore has to be signed by the
client CA and allow client authentication (the chart's cert-manager certificates do both).

Exit status: 0 healthy, 1 unhealthy (what Docker and Kubernetes expect).
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cuvis_cluster.common.settings import ProbeSettings

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
# Status codes that prove a gRPC server answered, even though the health call itself failed.
_ANSWERED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


def local_target(listen: str) -> str:
    """Where to reach a server that binds ``listen`` from inside its own container."""
    host, _, port = listen.rpartition(":")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"{host}:{port}"


def certificate_names(pem_path: Path) -> list[str]:
    """DNS names (SANs first, then the CN) of the first certificate in a PEM file."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(pem_path))  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError):
        return []
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    return names


def build_parser() -> argparse.ArgumentParser:
    env = ProbeSettings()
    parser = argparse.ArgumentParser(
        prog="python -m cuvis_cluster.deploy.healthcheck",
        description="Call grpc.health.v1.Health/Check on this container's cuvis server.",
    )
    parser.add_argument("--mode", choices=["ready", "alive"], default="ready")
    parser.add_argument(
        "--address",
        default=None,
        help="HOST:PORT to check (default: from CUVIS_LISTEN, wildcard hosts mapped to 127.0.0.1).",
    )
    parser.add_argument("--service", default="", help="Health service name ('' = the whole server).")
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait for the answer.")
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Use TLS (default: when CUVIS_TLS_CERT is set).",
    )
    parser.add_argument("--ca", default=None, help="PEM roots to trust (default: CUVIS_TLS_CERT itself).")
    parser.add_argument(
        "--cert", default=None, help="Client certificate (default with mTLS: CUVIS_TLS_CERT)."
    )
    parser.add_argument("--key", default=None, help="Client key (default with mTLS: CUVIS_TLS_KEY).")
    parser.add_argument(
        "--server-name",
        default=None,
        help="Name expected in the server certificate (default: the first DNS name in --ca).",
    )
    parser.set_defaults(
        listen=env.listen,
        env_cert=env.tls_cert,
        env_key=env.tls_key,
        env_client_ca=env.tls_client_ca,
    )
    return parser


def _channel(args: argparse.Namespace) -> grpc.Channel:
    target = args.address or local_target(args.listen)
    use_tls = args.tls if args.tls is not None else args.env_cert is not None
    if not use_tls:
        return grpc.insecure_channel(target)
    ca_path = args.ca or args.env_cert
    if ca_path is None:
        raise SystemExit("unhealthy: TLS requested but neither --ca nor CUVIS_TLS_CERT is set")
    cert_path = args.cert or (args.env_cert if args.env_client_ca else None)
    key_path = args.key or (args.env_key if args.env_client_ca else None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_path).read_bytes(),
        private_key=Path(key_path).read_bytes() if cert_path and key_path else None,
        certificate_chain=Path(cert_path).read_bytes() if cert_path and key_path else None,
    )
    options = []
    server_name = args.server_name
    if server_name is None:
        names = certificate_names(Path(ca_path))
        server_name = names[0] if names else None
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    with _channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if args.mode == "alive" and code in _ANSWERED:
                return True, f"alive (health answered {code.name})"
            return False, f"{code.name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if args.mode == "alive" or reply.status == health_pb2.HealthCheckResponse.SERVING:
        return True, status
    return False, status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        healthy, reason = check(args)
    except OSError as exc:  # unreadable certificate files
        healthy, reason = False, str(exc)
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
