"""Is a client's header list a well-formed HTTP/2 request or trailer section? (RFC 9113 section 8)

A malformed request is a stream error of type PROTOCOL_ERROR (section 8.1.1): the stream is reset and
never reaches a worker. gRPC clients send the same few header lists over and over, so a verdict is
cached per decoded list (:class:`~cuvis_cluster.gateway.hpackfast.Decoder` hands out the same list
object for a repeated block): the steady-state cost is one dict lookup per call.
"""

from __future__ import annotations

import re

Header = tuple[bytes, bytes]

# Section 8.2.1: lower-case token characters only (an upper-case name is malformed, section 8.2).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# Section 8.2.1: no NUL, CR or LF anywhere, no whitespace at either end.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# Section 8.2.2: fields that belong to a single HTTP/1.1 connection.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})  # section 8.3.1

Verdict = tuple[str | None, int]
_verdicts: dict[int, tuple[list[Header], Verdict]] = {}


def check_request(headers: list[Header]) -> Verdict:
    """(why ``headers`` is not a well-formed request or None, declared content-length or -1)."""
    hit = _verdicts.get(id(headers))
    if hit is not None and hit[0] is headers:
        return hit[1]
    verdict = _request_problem(headers), content_length(headers)
    if verdict[1] == -2:
        verdict = "content-length is not a number", -1  # section 8.1.1
    if len(_verdicts) > 256:
        _verdicts.clear()
    _verdicts[id(headers)] = (headers, verdict)  # holding the list keeps its id from being reused
    return verdict


def _request_problem(headers: list[Header]) -> str | None:
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular field"  # section 8.3
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name!r} is not one of a request"  # section 8.3
            if name in seen:
                return f"pseudo-header {name!r} twice"  # section 8.3.1
            seen.add(name)
            problem = _field_problem(name[1:], value)
        else:
            regular = True
            problem = _field_problem(name, value)
        if problem:
            return problem
    if b":method" not in seen or b":scheme" not in seen or b":path" not in seen:
        return "a request needs :method, :scheme and :path"  # section 8.3.1
    for name, value in headers:
        if name == b":path" and not value:
            return "empty :path"  # section 8.3.1
    return None


def trailers_problem(headers: list[Header]) -> str | None:
    """Why ``headers`` is not a well-formed trailer section (None when it is)."""
    for name, value in headers:
        if name[:1] == b":":
            return f"pseudo-header {name!r} in trailers"  # section 8.1
        problem = _field_problem(name, value)
        if problem:
            return problem
    return None


def _field_problem(name: bytes, value: bytes) -> str | None:
    if not _NAME.fullmatch(name):
        return f"field name {name!r} is not a lower-case token"  # sections 8.2, 8.2.1
    if _BAD_VALUE.search(value):
        return f"field {name!r} has a value with NUL, CR, LF or surrounding whitespace"  # 8.2.1
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name!r}"  # section 8.2.2
    if name == b"te" and value != b"trailers":
        return "TE other than 'trailers'"  # section 8.2.2
    return None


def content_length(headers: list[Header]) -> int:
    """The declared content-length, or -1 (gRPC never sends one); section 8.1.1."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else -2  # -2: unparseable, malformed
    return -1
