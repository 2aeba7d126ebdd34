"""The single error->status table: every domain error has a code; bugs become INTERNAL with a request id."""

from __future__ import annotations

import errno
import logging

import grpc
import pytest

from cuvis_cluster import errors
from cuvis_cluster.wire.status import ERROR_FOR_CODE, STATUS_TABLE, status_for

DOMAIN_ERRORS = [
    cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.CuvisError)
]


@pytest.mark.parametrize("cls", [c for c in DOMAIN_ERRORS if c is not errors.CuvisError])
def test_every_domain_error_has_a_status_code_and_keeps_its_message(cls):
    code, details = status_for(cls("session abc not found"))
    assert code is STATUS_TABLE[cls]
    assert code is not grpc.StatusCode.INTERNAL
    assert details == "session abc not found"
    assert ERROR_FOR_CODE[code] is cls


def test_subclasses_inherit_their_parents_code():
    class BadTensor(errors.InvalidArgument):
        pass

    assert status_for(BadTensor("inputs.cube: bad"))[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_unexpected_exceptions_are_internal_with_a_request_id_in_the_log(caplog):
    with caplog.at_level(logging.ERROR):
        code, details = status_for(ZeroDivisionError("secret internals"), method="/x/Y")
    assert code is grpc.StatusCode.INTERNAL
    assert "secret internals" not in details
    request_id = details.split("request id ")[1].split(")")[0]
    assert any(request_id in record.getMessage() for record in caplog.records)


def test_an_escaped_path_error_is_invalid_argument_with_the_path_shortened(caplog):
    # The engine names the field at its boundary; an OSError that still escapes is a path the client sent.
    # Only its last component is shown: the rest is the worker's own directory layout.
    long_path = "/srv/worker-7/outputs/" + "c" * 5000
    with caplog.at_level(logging.WARNING):
        code, details = status_for(OSError(errno.ENAMETOOLONG, "File name too long", long_path), method="M")
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("a path in the request: File name too long: 'ccc")
    assert "worker-7" not in details and "outputs" not in details
    assert "(5000 characters)" in details and len(details) < 300
    assert any("unchecked path error in M" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EIO, "Input/output error", "/outputs/x"),  # the disk, not the request
        OSError(errno.ENAMETOOLONG, "File name too long"),  # no path: nothing says the client sent it
        RecursionError("maximum recursion depth exceeded"),
    ],
)
def test_other_os_errors_stay_internal(exc):
    assert status_for(exc)[0] is grpc.StatusCode.INTERNAL
