"""TLS/mTLS on the client port, bearer tokens, session ownership, gateway->worker TLS, cert reload."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from conftest import start_gateway, start_standin, wait_workers
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import procs

from cuvis_cluster import errors
from cuvis_cluster.gateway.security import TokenFile, authenticate, bearer_token
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

pytestmark = pytest.mark.integration


class Pki:
    """A throw-away CA that signs server and client certificates into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def credentials(self, client: str | None = None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca_path.read_bytes())
        cert, key = self.dir / f"{client}.pem", self.dir / f"{client}.key"
        return grpc.ssl_channel_credentials(self.ca_path.read_bytes(), key.read_bytes(), cert.read_bytes())


@pytest.fixture
def setup(tmp_path):
    pki = Pki(tmp_path)
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    worker = start_standin(tmp_path, url, "worker")
    yield pki, url, worker
    worker.stop()
    redis_server.stop()


def _code(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_mtls_identities_and_ownership(setup, tmp_path):
    pki, url, _worker = setup
    cert, key = pki.issue("gateway", server=True)
    pki.issue("alice", server=False)
    pki.issue("bob", server=False)
    alice_creds = pki.credentials("alice")
    gateway = start_gateway(
        tmp_path,
        url,
        "gw",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-client-ca",
        str(pki.ca_path),
        credentials=alice_creds,
    )
    try:
        wait_workers(gateway.address, 1, credentials=alice_creds)
        alice = pb_grpc.CuvisAIServiceStub(gateway.channel(alice_creds))
        bob = pb_grpc.CuvisAIServiceStub(gateway.channel(pki.credentials("bob")))
        anonymous = pb_grpc.CuvisAIServiceStub(gateway.channel(pki.credentials(None)))
        plaintext = pb_grpc.CuvisAIServiceStub(gateway.channel())

        # No client certificate: the handshake is refused.
        assert (
            _code(lambda: anonymous.CreateSession(pb.CreateSessionRequest(), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
        assert (
            _code(lambda: plaintext.CreateSession(pb.CreateSessionRequest(), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )

        session = alice.CreateSession(pb.CreateSessionRequest()).session_id
        alice.Inference(pb.InferenceRequest(session_id=session))
        for call in (
            lambda: bob.Inference(pb.InferenceRequest(session_id=session)),
            lambda: bob.CloseSession(pb.CloseSessionRequest(session_id=session)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert info.value.details() == f"Session {session} not found"  # same as an unknown session
        alice.Inference(pb.InferenceRequest(session_id=session))
        alice.CloseSession(pb.CloseSessionRequest(session_id=session))
    finally:
        gateway.stop()


def test_bearer_tokens(setup, tmp_path):
    _pki, url, _worker = setup
    tokens = tmp_path / "tokens"
    tokens.write_text("# token identity\ns3cret-a alice\ns3cret-b bob\n")
    gateway = start_gateway(tmp_path, url, "gw", "--auth-token-file", str(tokens))  # health needs no token
    try:
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel())

        def as_(token: str):
            return [("authorization", f"Bearer {token}")]

        with pytest.raises(grpc.RpcError) as info:
            stub.CreateSession(pb.CreateSessionRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=as_("nope"))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        session = stub.CreateSession(pb.CreateSessionRequest(), metadata=as_("s3cret-a")).session_id
        stub.Inference(pb.InferenceRequest(session_id=session), metadata=as_("s3cret-a"))
        assert _code(
            lambda: stub.Inference(pb.InferenceRequest(session_id=session), metadata=as_("s3cret-b"))
        ) == (grpc.StatusCode.NOT_FOUND)
        # A client cannot claim an owner itself: x-cuvis-* metadata is stripped.
        forged = [*as_("s3cret-b"), ("x-cuvis-owner", "alice")]
        assert _code(lambda: stub.Inference(pb.InferenceRequest(session_id=session), metadata=forged)) == (
            grpc.StatusCode.NOT_FOUND
        )
        # The token file is re-read when it changes.
        time.sleep(1.1)
        tokens.write_text("s3cret-c alice\n")
        procs.wait_for(
            lambda: (
                _code(
                    lambda: stub.Inference(pb.InferenceRequest(session_id=session), metadata=as_("s3cret-c"))
                )
                == grpc.StatusCode.OK
            ),
            timeout=10,
            what="reloaded token file",
        )
        assert _code(
            lambda: stub.Inference(pb.InferenceRequest(session_id=session), metadata=as_("s3cret-a"))
        ) == (grpc.StatusCode.UNAUTHENTICATED)
    finally:
        gateway.stop()


def _served_certificate_serial(address: str, ca: Path) -> int:
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        der = s.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_tls_certificate_reload(setup, tmp_path):
    pki, url, _worker = setup
    cert, key = pki.issue("gateway", server=True)
    gateway = start_gateway(
        tmp_path, url, "gw", "--tls-cert", str(cert), "--tls-key", str(key), credentials=pki.credentials(None)
    )
    try:
        before = _served_certificate_serial(gateway.address, pki.ca_path)
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel(pki.credentials(None)))
        stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest())
        time.sleep(1.1)
        new_cert, new_key = pki.issue("gateway-next", server=True)
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        procs.wait_for(
            lambda: _served_certificate_serial(gateway.address, pki.ca_path) != before,
            timeout=10,
            what="new certificate",
        )
        stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest())  # the old connection still works
    finally:
        gateway.stop()


def test_gateway_to_worker_tls(tmp_path):
    pki = Pki(tmp_path)
    redis_server = procs.start_redis(tmp_path)
    url = f"redis://{redis_server.address}/0"
    wcert, wkey = pki.issue("worker", server=True)
    worker = gateway = None
    try:
        worker = start_standin(
            tmp_path,
            url,
            "tlsworker",
            "--tls-cert",
            str(wcert),
            "--tls-key",
            str(wkey),
            credentials=pki.credentials(None),
        )
        gateway = start_gateway(tmp_path, url, "gw", "--worker-tls-ca", str(pki.ca_path))
        wait_workers(gateway.address, 1)
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel())
        session = stub.CreateSession(pb.CreateSessionRequest()).session_id
        stub.Inference(pb.InferenceRequest(session_id=session))
        # The worker refuses plaintext, so this really went over TLS.
        plain = pb_grpc.CuvisAIServiceStub(worker.channel())
        assert _code(lambda: plain.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(), timeout=3)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    finally:
        for server in (gateway, worker, redis_server):
            if server is not None:
                server.stop()


def test_token_and_certificate_together_must_name_one_identity(setup, tmp_path):
    pki, url, _worker = setup
    cert, key = pki.issue("gateway", server=True)
    pki.issue("alice", server=False)
    pki.issue("bob", server=False)
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\ntok-bob bob\n")
    alice_creds = pki.credentials("alice")
    gateway = start_gateway(
        tmp_path,
        url,
        "gw",
        *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca_path)),
        *("--auth-token-file", str(tokens)),
        credentials=alice_creds,
    )
    try:
        alice = pb_grpc.CuvisAIServiceStub(gateway.channel(alice_creds))
        bob = pb_grpc.CuvisAIServiceStub(gateway.channel(pki.credentials("bob")))

        def create(stub, *metadata: tuple[str, str]):
            return _details(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata))

        # Both are needed, and they must agree.
        assert create(alice, ("authorization", "Bearer tok-alice"))[0] == grpc.StatusCode.OK
        for stub, metadata in (
            (alice, []),  # a certificate alone
            (bob, ["Bearer tok-alice"]),  # Bob's certificate, Alice's token
            (alice, ["Bearer tok-bob"]),
            (alice, ["Basic tok-alice"]),
            (alice, ["Bearer tok-alic"]),  # a prefix of a token
            (alice, ["Bearertok-alice"]),
            (alice, ["Bearer tok-alice", "Bearer tok-alice"]),
        ):
            code, details = create(stub, *(("authorization", value) for value in metadata))
            assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert "tok-" not in details  # a refusal never repeats a token
        # The scheme is case-insensitive (RFC 7235 section 2.1); the token is exact.
        assert create(alice, ("authorization", "bearer tok-alice"))[0] == grpc.StatusCode.OK
    finally:
        gateway.stop()


def test_cluster_status_needs_a_token_health_and_reflection_do_not(setup, tmp_path):
    _pki, url, _worker = setup
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\n")
    gateway = start_gateway(tmp_path, url, "gw", "--auth-token-file", str(tokens))
    try:
        channel = gateway.channel()
        status = control_pb2_grpc.ClusterStatusServiceStub(channel)
        code, _ = _details(lambda: status.ListWorkers(control_pb2.ListWorkersRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        reply = procs.wait_for(
            lambda: (
                status.ListWorkers(
                    control_pb2.ListWorkersRequest(),
                    metadata=[("authorization", "Bearer tok-alice")],
                    timeout=5,
                ).workers
            ),
            timeout=20,
            what="the worker in ListWorkers",
        )
        assert len(reply) == 1
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert "cuvis_ai.v1.CuvisAIService" in names
    finally:
        gateway.stop()


def _details(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("values", "token"),
    [
        ([], None),
        ([b"Bearer abc"], b"abc"),
        ([b"bEaReR abc"], b"abc"),
        ([b"Bearer  abc"], b"abc"),  # 1*SP
        ([b"Bearer abc "], b"abc "),  # kept as sent: then it matches no token
    ],
)
def test_bearer_header_parsing(values, token):
    assert bearer_token(values) == token


@pytest.mark.parametrize("values", [[b"Basic abc"], [b"Bearer"], [b"Bearer "], [b"Bearer a", b"Bearer a"]])
def test_bearer_header_refusals(values):
    with pytest.raises(errors.Unauthenticated):
        bearer_token(values)


def test_token_match_is_exact(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("tok-alice alice\n")
    tokens = TokenFile(path)
    assert tokens.identity(b"tok-alice") == "alice"
    for near in (b"tok-alice ", b" tok-alice", b"tok-alic", b"tok-alicee", b"TOK-ALICE", b""):
        assert tokens.identity(near) is None
    with pytest.raises(errors.Unauthenticated):
        authenticate([b"Bearer tok-alice"], {"subject": ((("commonName", "bob"),),)}, tokens, True)
    assert (
        authenticate([b"Bearer tok-alice"], {"subject": ((("commonName", "alice"),),)}, tokens, True)
        == "alice"
    )
