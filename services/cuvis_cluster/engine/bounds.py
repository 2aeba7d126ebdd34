"""The limits on what a client may send the engine: paths and config documents.

Everything a request carries is checked here once, at the boundary, before it reaches the file system or a
recursive algorithm, so that bad input is an ``InvalidArgument`` naming the request field and never an
``OSError`` or ``RecursionError`` deep inside the engine (which the status table would report as INTERNAL).

Paths: a path is text the worker's file system can take. No NUL byte, no lone surrogate (a string that
cannot be encoded as UTF-8 cannot name a file), at most :data:`PATH_MAX` bytes in all and :data:`NAME_MAX`
bytes per component (Linux's limits: longer names fail with ENAMETOOLONG anyway, only later and less
clearly). File-system calls on a client's path run inside :func:`client_path`, which turns the errors a
client can provoke (a name too long once joined to a root, a symlink loop, a file where a directory is
expected) into domain errors naming the field.

Config documents (JSON or YAML a client sends in ``config_bytes``, a manifest, ``config_content``): at most
:data:`MAX_DOCUMENT_BYTES`, nested at most :data:`MAX_DEPTH` levels, at most :data:`MAX_VALUES` values
(counted as the parsed tree is walked, so a YAML alias bomb, a few bytes that expand to billions of
values, is refused without being expanded). The bundled configs are a few kilobytes, at most 6 levels deep
and a few hundred values, so no real pipeline, train run or manifest comes near these limits.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from typing import Any

import yaml

from cuvis_cluster.errors import CuvisError, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

PATH_MAX = 4096  # bytes in a whole path (Linux PATH_MAX, terminating NUL included there)
NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX for ext4, xfs, tmpfs, overlayfs)
MAX_DOCUMENT_BYTES = 4 << 20  # a config document; the bundled ones are under 10 KiB
MAX_DEPTH = 100  # nesting of mappings and lists; the bundled configs reach 6
MAX_VALUES = 1_000_000  # values in one parsed document (a train run listing every frame id stays far below)
_SHOWN = 120  # characters of a client's text quoted back in an error message


def shown(text: str) -> str:
    """``text`` quoted for an error message, shortened in the middle when long (a 5000-character path
    is not worth echoing whole, and a reply should stay readable)."""
    if len(text) <= _SHOWN:
        return repr(text)
    half = _SHOWN // 2
    return f"{text[:half]!r}...{text[-half:]!r} ({len(text)} characters)"


# ---------------------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------------------
def check_path(text: str, field: str) -> str:
    """``text`` if the file system can take it as a path; InvalidArgument naming ``field`` otherwise."""
    if "\x00" in text:
        raise InvalidArgument(f"{field}: contains a NUL byte", field=field)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field}: not valid Unicode text (a lone surrogate)", field=field) from None
    if len(encoded) > PATH_MAX:
        raise InvalidArgument(
            f"{field}: path too long ({len(text)} characters, {len(encoded)} bytes in UTF-8; "
            f"at most {PATH_MAX} bytes)",
            field=field,
        )
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            name = part.decode("utf-8")
            raise InvalidArgument(
                f"{field}: path component {shown(name)} is too long ({len(part)} bytes; at most {NAME_MAX})",
                field=field,
            )
    return text


# Errors of a file-system call that the path itself causes, so the client who sent it.
_CLIENT_ERRNOS: dict[int, tuple[type[CuvisError], str]] = {
    errno.ENAMETOOLONG: (InvalidArgument, "path too long"),
    errno.ELOOP: (InvalidArgument, "too many levels of symbolic links"),
    errno.ENOTDIR: (InvalidArgument, "a component of the path is not a directory"),
    errno.EINVAL: (InvalidArgument, "not a valid path"),
    errno.EILSEQ: (InvalidArgument, "not a valid file name"),
    errno.EISDIR: (InvalidArgument, "is a directory"),
    errno.ENOENT: (NotFound, "not found"),
    errno.EACCES: (PermissionDenied, "permission denied"),
    errno.EPERM: (PermissionDenied, "operation not permitted"),
    errno.EROFS: (PermissionDenied, "read-only file system"),
    errno.ENOSPC: (ResourceExhausted, "no space left on the worker's volume"),
    errno.EDQUOT: (ResourceExhausted, "disk quota exceeded on the worker's volume"),
}


def os_error(exc: OSError, field: str, text: str) -> CuvisError | None:
    """The domain error for ``exc`` raised by a file-system call on the client's path ``text``; None when
    the error says nothing about the path (an I/O error, say), which stays a server fault."""
    found = _CLIENT_ERRNOS.get(exc.errno or 0)
    if found is None:
        return None
    cls, reason = found
    return cls(f"{field}: {shown(text)}: {reason}", field=field)


@contextlib.contextmanager
def client_path(field: str, text: str) -> Iterator[None]:
    """Run file-system calls on the client's path ``text``; the errors it causes name ``field``.

    pathlib reports a symlink loop (``resolve``) and an unknown user (``expanduser`` of ``~nobody``) as
    RuntimeError (Python 3.11), so those are mapped too.
    """
    try:
        yield
    except OSError as exc:
        mapped = os_error(exc, field, text)
        if mapped is None:
            raise
        raise mapped from None
    except RuntimeError as exc:
        reason = str(exc).lower()
        if "symlink loop" in reason:
            raise InvalidArgument(f"{field}: {shown(text)}: symbolic link loop", field=field) from None
        if "home directory" in reason:
            raise InvalidArgument(
                f"{field}: {shown(text)}: no such user's home directory", field=field
            ) from None
        raise


# ---------------------------------------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------------------------------------
def document_text(payload: bytes | bytearray | memoryview | str, field: str) -> str:
    """A document's text: bounded in size and valid UTF-8; InvalidArgument naming ``field`` otherwise."""
    if isinstance(payload, str):
        size = len(payload)  # characters: an upper bound is all that is needed before encoding
        if size > MAX_DOCUMENT_BYTES:
            raise _too_big(field, size)
        return payload
    raw = bytes(payload)
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise _too_big(field, len(raw))
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{field}: not UTF-8 text (invalid byte at offset {exc.start}); send JSON or YAML", field=field
        ) from None


def _too_big(field: str, size: int) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: the config is {size} bytes; at most {MAX_DOCUMENT_BYTES} bytes are accepted", field=field
    )


def parse_json(payload: bytes | bytearray | memoryview | str, field: str) -> Any:
    """JSON (only) -> value, bounded in size, depth and values; InvalidArgument naming ``field``."""
    text = document_text(payload, field)
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(field) from None
    except ValueError as exc:  # JSONDecodeError, and an integer past Python's 4300-digit limit
        raise InvalidArgument(f"{field}: not valid JSON: {_first_line(exc)}", field=field) from None
    check_tree(value, field)
    return value


def parse_yaml(text: str, field: str) -> Any:
    """YAML text -> value with the safe loader, bounded; InvalidArgument naming ``field``.

    Any exception of the loader is the document's fault (a bad timestamp raises ValueError, a 5000-digit
    integer ValueError, deep nesting RecursionError), so every one becomes InvalidArgument.
    """
    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise _too_deep(field) from None
    except Exception as exc:
        raise InvalidArgument(f"{field}: not valid YAML: {_first_line(exc)}", field=field) from None
    check_tree(value, field)
    return value


def parse_document(payload: bytes | bytearray | memoryview | str, field: str) -> Any:
    """A config document: JSON, or a YAML mapping when it is not JSON; bounded in size, depth and values.

    A text that is neither is reported with JSON's error, which says more than YAML's; so is a YAML
    scalar (``hello``), since a config is a mapping.
    """
    text = document_text(payload, field)
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(field) from None
    except ValueError as json_exc:  # JSONDecodeError, and an integer past Python's 4300-digit limit
        not_json = InvalidArgument(f"{field}: not valid JSON: {_first_line(json_exc)}", field=field)
        try:
            value = yaml.safe_load(text)
        except RecursionError:
            raise _too_deep(field) from None
        except Exception:  # see parse_yaml
            raise not_json from None
        if not isinstance(value, dict):
            raise not_json from None
    check_tree(value, field)
    return value


def check_tree(value: Any, field: str) -> None:
    """Refuse a parsed document nested deeper than MAX_DEPTH or holding more than MAX_VALUES values.

    Iterative, so it cannot itself run out of stack; it stops at the first value over a limit, so a YAML
    alias bomb costs at most MAX_VALUES steps.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise InvalidArgument(
                f"{field}: the config holds more than {MAX_VALUES} values (YAML aliases expand into copies)",
                field=field,
            )
        if isinstance(item, dict):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH:
            raise _too_deep(field)
        stack.extend((child, depth + 1) for child in children)


def _too_deep(field: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: the config is nested deeper than {MAX_DEPTH} levels", field=field)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3]) or type(exc).__name__
