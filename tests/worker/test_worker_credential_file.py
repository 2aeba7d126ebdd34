"""The cluster credential file as a worker reads it: one credential per line, compared exactly."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.worker.auth import ClusterCredential

TOKEN_CHARS = string.ascii_letters + string.digits + "-_"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=8, max_size=64)


def credential(path, text: str) -> ClusterCredential:
    path.write_bytes(text.encode())
    return ClusterCredential(path, check_interval=0.0)


@settings(max_examples=60, deadline=None)
@given(accepted=st.lists(tokens, min_size=1, max_size=4, unique=True), other=tokens)
def test_every_line_is_accepted_and_nothing_else(tmp_path_factory, accepted, other):
    path = tmp_path_factory.mktemp("token") / "cluster-token"
    # CRLF, blank lines and surrounding blanks are what editors and `kubectl create secret` leave.
    cred = credential(path, "\r\n".join(f"  {t} " for t in accepted) + "\r\n\n")
    for token in accepted:
        assert cred.accepts(token.encode())
    if other not in accepted:
        assert not cred.accepts(other.encode())
    first = accepted[0]
    for near in (first[:-1], first + "x", first.upper() if first.upper() != first else first + "A", ""):
        if near not in accepted:
            assert not cred.accepts(near.encode())


def test_an_empty_file_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="holds no credential"):
        credential(tmp_path / "cluster-token", " \n\n")
    with pytest.raises(OSError):
        ClusterCredential(tmp_path / "missing")


def test_a_broken_rewrite_keeps_the_loaded_credentials(tmp_path):
    path = tmp_path / "cluster-token"
    cred = credential(path, "old\n")
    path.write_text("")  # a half-written rotation
    assert cred.accepts(b"old")
    path.unlink()
    assert cred.accepts(b"old")
    path.write_text("new\n")
    assert cred.accepts(b"new") and not cred.accepts(b"old")
