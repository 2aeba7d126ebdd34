"""The limits on client paths and config documents (engine/bounds.py): bad input is InvalidArgument naming
the field, at the documented limits, and never an OSError or RecursionError."""

from __future__ import annotations

import errno
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.engine import bounds
from cuvis_cluster.errors import CuvisError, InvalidArgument, NotFound, ResourceExhausted


# -- paths ----------------------------------------------------------------------------------------------
def test_a_path_at_the_limits_is_accepted():
    longest = "/".join(["a" * 254] * 16) + "/" + "b" * 16
    assert len(longest.encode()) == 4096
    assert bounds.check_path(longest, "pipeline_path") == longest
    assert bounds.check_path("x" * 255, "pipeline_path") == "x" * 255


def test_a_path_over_path_max_names_the_field_and_the_limit():
    with pytest.raises(InvalidArgument) as info:
        bounds.check_path("a/" * 2500, "pipeline_path")
    assert info.value.field == "pipeline_path"
    assert info.value.message == (
        "pipeline_path: path too long (5000 characters, 5000 bytes in UTF-8; at most 4096 bytes)"
    )


def test_limits_count_utf8_bytes_not_characters():
    with pytest.raises(InvalidArgument, match=r"component .* too long \(256 bytes; at most 255\)"):
        bounds.check_path("\u00e9" * 128, "path")  # 128 characters, 256 bytes
    with pytest.raises(InvalidArgument, match="2099 characters, 4178 bytes in UTF-8"):
        bounds.check_path("/".join(["\u00e9" * 99] * 21), "path")


@pytest.mark.parametrize(
    ("text", "reason"),
    [("a\x00b", "contains a NUL byte"), ("a\udcffb", "lone surrogate"), ("d/" + "c" * 256, "too long")],
)
def test_paths_the_file_system_cannot_take_are_refused(text, reason):
    with pytest.raises(InvalidArgument, match=reason) as info:
        bounds.check_path(text, "trainrun_path")
    assert info.value.field == "trainrun_path"
    assert len(info.value.message) < 400  # a long path is shortened, not echoed whole


# Long texts are repeated short ones: generating 4000 random characters per example is slow.
LONG_TEXT = st.builds(
    lambda part, times: part * times, st.text(min_size=1, max_size=4), st.integers(60, 2500)
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | LONG_TEXT)
def test_check_path_accepts_or_refuses_with_invalid_argument_only(text):
    try:
        assert bounds.check_path(text, "f") == text
    except InvalidArgument as exc:
        assert exc.field == "f"


def test_client_path_maps_the_errors_a_path_causes_and_keeps_server_faults(tmp_path):
    path_error = pytest.raises(InvalidArgument, match="weights_path: 'x': path too long")
    with path_error as info, bounds.client_path("weights_path", "x"):
        raise OSError(errno.ENAMETOOLONG, "File name too long", "/out/x")
    assert info.value.field == "weights_path"
    with pytest.raises(NotFound), bounds.client_path("f", "x"):
        raise FileNotFoundError(errno.ENOENT, "gone", "x")
    with pytest.raises(ResourceExhausted), bounds.client_path("f", "x"):
        raise OSError(errno.ENOSPC, "full", "x")
    with pytest.raises(OSError) as raw, bounds.client_path("f", "x"):
        raise OSError(errno.EIO, "I/O error", "x")  # the disk, not the client
    assert raw.value.errno == errno.EIO
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InvalidArgument, match="symbolic link loop"), bounds.client_path("f", "loop/x"):
        (loop / "x").resolve()
    with pytest.raises(InvalidArgument, match="home directory"), bounds.client_path("f", "~nobody-here"):
        __import__("pathlib").Path("~nobody-here/x").expanduser()


# -- documents ------------------------------------------------------------------------------------------
def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_nesting_up_to_the_limit_parses_and_one_more_level_is_refused():
    assert isinstance(bounds.parse_document(nested(bounds.MAX_DEPTH), "config"), dict)
    with pytest.raises(InvalidArgument) as info:
        bounds.parse_document(nested(bounds.MAX_DEPTH + 1), "config")
    assert info.value.message == "config: the config is nested deeper than 100 levels"
    assert info.value.field == "config"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # json.loads itself would raise RecursionError
        "a: " + "[" * 2000 + "]" * 2000,  # YAML flow style: the YAML parser recurses
        "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 2000)),  # YAML block style
    ],
)
def test_deep_documents_are_refused_without_recursion_errors(text):
    with pytest.raises(InvalidArgument, match="config: the config is nested deeper than 100 levels"):
        bounds.parse_document(text, "config")


def test_a_yaml_alias_bomb_is_refused_without_expanding_it():
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 values
    started = time.process_time()
    with pytest.raises(InvalidArgument, match="more than 1000000 values"):
        bounds.parse_document("\n".join(lines), "config")
    assert time.process_time() - started < 60  # bounded work, far from 3.5 billion values


def test_a_document_over_the_size_limit_is_refused_before_parsing():
    body = b'{"a": "' + b"x" * bounds.MAX_DOCUMENT_BYTES + b'"}'
    with pytest.raises(InvalidArgument, match=r"config: the config is \d+ bytes; at most 4194304 bytes"):
        bounds.parse_document(body, "config")


@pytest.mark.parametrize(
    "text",
    [
        '{"n": ' + "9" * 5000 + "}",  # past Python's int digit limit: ValueError, not JSONDecodeError
        "n: " + "9" * 5000,
        "when: 2001-13-45",  # YAML timestamp with month 13: ValueError in the loader
        "!!python/object/apply:os.system ['true']",
        b"\xff\xfe".decode("latin-1"),
    ],
)
def test_loader_errors_are_invalid_argument(text):
    with pytest.raises(InvalidArgument) as info:
        bounds.parse_document(text, "config")
    assert info.value.field == "config"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_or_fail_as_invalid_argument(payload):
    try:
        bounds.parse_document(payload, "config")
    except CuvisError as exc:
        assert isinstance(exc, InvalidArgument) and exc.field == "config"
