"""The single error->status table: every domain error has a code; bugs become INTERNAL with a request id."""

from __future__ import annotations

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
