"""gRPC-over-HTTP/2 details the gateway needs without grpcio: status trailers, grpc-timeout, headers."""

from __future__ import annotations

import math
from urllib.parse import quote

import grpc

# wire integer -> status name (metrics labels).
CODE_NAME: dict[int, str] = {c.value[0]: c.name for c in grpc.StatusCode}

CONTENT_TYPE = b"application/grpc"

# Headers that describe one hop and never travel to the next one (RFC 9110 section 7.6.1, plus the
# pseudo-headers the gateway writes itself).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
        b"content-length",
    }
)

# Characters that grpc-message leaves unescaped: printable ASCII except '%' (gRPC HTTP/2 spec).
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_message(message: str) -> bytes:
    """Percent-encode a status message as the grpc-message header wants it."""
    return quote(message, safe=_SAFE, encoding="utf-8", errors="replace").encode("ascii")


def trailers(code: int, message: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", str(code).encode())]
    if message:
        out.append((b"grpc-message", encode_message(message)))
    return out


# The gateway reads request messages to route them and refuses compressed ones (gateway/scan.py), so
# it tells clients so in every response, in place of what the worker behind it would accept.
ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity")


def trailers_only(code: int, message: str = "") -> list[tuple[bytes, bytes]]:
    """A complete error response in one HEADERS frame (status 200 + grpc-status)."""
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE), ACCEPT_ENCODING, *trailers(code, message)]


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A worker's response headers as the gateway passes them on: without hop-by-hop fields, and
    advertising only the request encodings the gateway accepts."""
    out = [(k, v) for k, v in headers if k not in HOP_BY_HOP and k != ACCEPT_ENCODING[0]]
    out.append(ACCEPT_ENCODING)
    return out


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (e.g. ``100m``) in seconds; None when malformed."""
    if len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def format_timeout(seconds: float) -> bytes:
    """Seconds as a ``grpc-timeout`` value: at most 8 digits, the finest unit that fits, rounded up."""
    seconds = max(seconds, 0.0)
    for unit, scale in ((b"n", 1e-9), (b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        amount = math.ceil(seconds / scale)
        if amount < 100_000_000:
            return str(max(amount, 1)).encode() + unit
    return b"99999999H"
