"""TLS for the client port (reloaded when the files change), gateway->worker TLS, and caller identity.

Identity of a call, when clients are identified at all (:func:`authenticate`):

* tokens only (``auth_token_file``, lines ``<token> <identity>``; ``#`` comments and blank lines
  ignored): the call must carry ``authorization: Bearer <token>`` with a listed token;
* mTLS only (``tls_client_ca``): the subject CN of the verified client certificate;
* both: the call needs both, and the token must belong to the certificate's identity, so that a
  stolen token is useless without its owner's key (Bob's certificate with Alice's token is refused).

The authorization header follows RFC 7235 section 2.1 / RFC 6750 section 2.1: the scheme ``Bearer`` is
matched case-insensitively (the RFCs say so, and the scheme is no secret), one or more spaces, then
the token, which must equal a listed token byte for byte: nothing is stripped, so a trailing space
or any other variation is an unknown token. Tokens are compared in constant time against every
listed token (digests of equal length, no early exit). A refusal never repeats the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import time
from pathlib import Path

from cuvis_cluster import errors
from cuvis_cluster.common.telemetry import register_secret

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0


def _stamp(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class ServerTls:
    """An ``SSLContext`` for the client port, rebuilt when cert, key or CA files change.

    New connections get the newest context; established ones keep theirs. A half-written rotation
    (files that do not load) keeps the previous context and logs a warning.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
        self.mutual = client_ca is not None
        self._stamp = _stamp(self.paths)
        self._context = self._build()
        self._checked = time.monotonic()

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.paths[0], self.paths[1])
        if self.mutual:
            ctx.load_verify_locations(cafile=str(self.paths[2]))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            try:
                stamp = _stamp(self.paths)
                if stamp != self._stamp:
                    self._context = self._build()
                    self._stamp = stamp
                    log.info("TLS files changed; new connections use the new certificate")
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("TLS files changed but cannot be loaded yet (%s); keeping the current ones", exc)
        return self._context


def client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """``SSLContext`` for gateway->worker connections (verifies the worker with ``ca``)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class TokenFile:
    """``token identity`` lines, re-read when the file changes. Every token is registered as a
    secret, so that no log line or error message can carry it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._digests: list[tuple[bytes, str]] = []
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        stamp = _stamp([self.path])
        digests: list[tuple[bytes, str]] = []
        for n, line in enumerate(self.path.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                # The line number only: the line itself holds a token.
                raise ValueError(f"{self.path}:{n}: expected 'token identity'")
            register_secret(parts[0])
            digests.append((_digest(parts[0].encode()), parts[1]))
        self._digests = digests
        self._stamp = stamp

    def identity(self, token: bytes) -> str | None:
        now = time.monotonic()
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            try:
                if _stamp([self.path]) != self._stamp:
                    self._load()
                    log.info("token file %s reloaded (%d tokens)", self.path, len(self._digests))
            except (OSError, ValueError) as exc:
                log.warning(
                    "token file %s cannot be reloaded (%s); keeping the current tokens", self.path, exc
                )
        # Digests have one length whatever the token's, and every entry is compared: the time taken
        # says nothing about which token, or how much of one, matched.
        presented = _digest(token)
        found = None
        for known, identity in self._digests:
            if hmac.compare_digest(known, presented):
                found = identity
        return found


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def certificate_identity(peer_cert: dict | None) -> str:
    """Subject CN of a verified peer certificate (``""`` when there is none)."""
    if not peer_cert:
        return ""
    for rdn in peer_cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def bearer_token(values: list[bytes]) -> bytes | None:
    """The token of the one ``authorization`` header (None when there is none); UNAUTHENTICATED for
    several headers or anything but ``Bearer`` + spaces + token (RFC 7235 ``credentials``)."""
    if not values:
        return None
    if len(values) > 1:
        raise errors.Unauthenticated("send one authorization header, not several")
    scheme, sep, rest = values[0].partition(b" ")
    token = rest.lstrip(b" ")
    if not sep or scheme.lower() != b"bearer" or not token:
        raise errors.Unauthenticated("unsupported authorization header: send 'authorization: Bearer <token>'")
    return token


def authenticate(
    authorization: list[bytes], peer_cert: dict | None, tokens: TokenFile | None, mutual_tls: bool
) -> str:
    """The identity of a call on a gateway that identifies callers (see the module docstring)."""
    token = bearer_token(authorization)
    if tokens is None:
        if token is not None:
            raise errors.Unauthenticated(
                "this gateway accepts no bearer tokens (it identifies by certificate)"
            )
        return _certificate_identity_or_refuse(peer_cert)
    if token is None:
        wanted = "a client certificate and " if mutual_tls else ""
        raise errors.Unauthenticated(f"this gateway requires {wanted}'authorization: Bearer <token>'")
    identity = tokens.identity(token)
    if identity is None:
        raise errors.Unauthenticated("unknown bearer token")
    if mutual_tls:
        subject = _certificate_identity_or_refuse(peer_cert)
        if not hmac.compare_digest(subject.encode(), identity.encode()):
            raise errors.Unauthenticated(
                f"the bearer token is not the token of the client certificate's identity ({subject})"
            )
    return identity


def _certificate_identity_or_refuse(peer_cert: dict | None) -> str:
    identity = certificate_identity(peer_cert)
    if not identity:
        raise errors.Unauthenticated(
            "this gateway identifies callers by a client certificate with a subject CN"
        )
    return identity


def read_cluster_token(path: Path | None) -> bytes | None:
    """The cluster credential: the first line of ``path`` (None when no file is configured).

    It is registered as a secret, so that no log line or error message can carry it.
    """
    if path is None:
        return None
    lines = Path(path).read_text().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise SystemExit(f"the cluster token file {path} is empty")
    register_secret(token)
    return token.encode("ascii")
