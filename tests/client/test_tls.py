"""TLS, mTLS, server-name override and bearer tokens as call credentials, against a real TLS server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from fake_server import FakeServer

from cuvis_cluster import errors
from cuvis_cluster.client import aio, connect

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    for name, cn, ext in (
        ("server", "gateway.test", "subjectAltName=DNS:gateway.test\nextendedKeyUsage=serverAuth"),
        ("client", "alice", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def mtls_server(pki):
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server = FakeServer(credentials=credentials).start()
    yield server
    server.stop()


def mtls_options(pki):
    """The same mTLS, server-name override and token for the sync and the async client."""
    return {
        "root_certificates": pki / "ca.crt",
        "client_certificate": pki / "client.crt",
        "client_key": pki / "client.key",
        "server_name": "gateway.test",
        "token": "t0ken",
        "timeout": 10,
    }


def test_mtls_with_server_name_override_and_token(pki, mtls_server):
    with connect(mtls_server.address, **mtls_options(pki)) as client:
        assert client.config.tls
        assert len(client.list_pipelines()) == 2
        with client.create_session() as session:
            assert session.id in mtls_server.service.sessions
    assert all(md.get("authorization") == "Bearer t0ken" for md in mtls_server.service.metadata)


def test_async_client_uses_the_same_mtls_and_token(pki, mtls_server):
    """aio.connect builds its channel from the same configuration: mTLS, server name and token."""

    async def scenario():
        async with aio.connect(mtls_server.address, **mtls_options(pki)) as client:
            assert client.config.tls
            async with await client.create_session() as session:
                return len(await client.list_pipelines()), session.id in mtls_server.service.sessions

    assert asyncio.run(scenario()) == (2, True)
    assert all(md.get("authorization") == "Bearer t0ken" for md in mtls_server.service.metadata)


def test_missing_client_certificate_is_refused(pki, mtls_server):
    with (
        connect(
            mtls_server.address,
            root_certificates=pki / "ca.crt",
            server_name="gateway.test",
            retry=False,
            timeout=5,
        ) as client,
        pytest.raises(errors.Unavailable),
    ):
        client.create_session()
    assert not mtls_server.service.calls


def test_wrong_server_name_is_refused(pki, mtls_server):
    with (
        connect(
            mtls_server.address,
            root_certificates=pki / "ca.crt",
            client_certificate=pki / "client.crt",
            client_key=pki / "client.key",
            server_name="someone-else.test",
            retry=False,
            timeout=5,
        ) as client,
        pytest.raises(errors.Unavailable),
    ):
        client.create_session()
    assert not mtls_server.service.calls


def test_plaintext_client_cannot_talk_to_a_tls_server(mtls_server):
    with connect(mtls_server.address, retry=False, timeout=5) as client, pytest.raises(errors.Unavailable):
        client.create_session()
