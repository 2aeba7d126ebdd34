"""TLS for the client port (reloaded when the files change), gateway->worker TLS, and caller identity.

Identity of a call, when clients are identified at all:

* a bearer token (``authorization: Bearer <token>``) listed in ``auth_token_file`` (lines
  ``<token> <identity>``; ``#`` comments and blank lines ignored), or
* the subject CN of the client certificate when the port runs mTLS (``tls_client_ca``).

With a token file configured, a call that carries neither a valid token nor a client certificate is
UNAUTHENTICATED. A token that is presented but unknown is always UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from pathlib import Path

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
    """``token identity`` lines, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tokens: dict[bytes, str] = {}
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        stamp = _stamp([self.path])
        tokens: dict[bytes, str] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{self.path}:{n}: expected 'token identity'")
            tokens[parts[0].encode()] = parts[1]
        self._tokens = tokens
        self._stamp = stamp

    def identity(self, token: bytes) -> str | None:
        now = time.monotonic()
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            try:
                if _stamp([self.path]) != self._stamp:
                    self._load()
                    log.info("token file %s reloaded (%d tokens)", self.path, len(self._tokens))
            except (OSError, ValueError) as exc:
                log.warning(
                    "token file %s cannot be reloaded (%s); keeping the current tokens", self.path, exc
                )
        found = None
        for known, identity in self._tokens.items():
            if hmac.compare_digest(known, token):
                found = identity
        return found


def certificate_identity(peer_cert: dict | None) -> str:
    """Subject CN of a verified peer certificate (``""`` when there is none)."""
    if not peer_cert:
        return ""
    for rdn in peer_cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def read_cluster_token(path: Path | None) -> bytes | None:
    """The cluster credential: the first line of ``path`` (None when no file is configured)."""
    if path is None:
        return None
    lines = Path(path).read_text().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise SystemExit(f"the cluster token file {path} is empty")
    return token.encode("ascii")
