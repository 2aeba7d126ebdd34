"""Issue 12's bad-input findings, through the engine facade: long paths and deeply nested configs are
InvalidArgument naming the request field (they were OSError / RecursionError, so INTERNAL), and a refused
save writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cuvis_cluster.errors import InvalidArgument

LONG = "a/" * 2500  # 5000 characters, the corpus's path
LONG_NAME = "b" * 5000  # one component far over NAME_MAX
TOO_LONG = "pipeline_path: path too long (5000 characters, 5000 bytes in UTF-8; at most 4096 bytes)"


@pytest.fixture
def loaded(engine) -> str:
    session = engine.create_session()
    engine.load_pipeline(session, engine.resolve_config(session, "pipeline", "rx_statistical"))
    return session


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("path", [LONG, LONG_NAME])
def test_long_paths_are_invalid_argument_naming_the_field(engine, loaded, path):
    calls = {
        "pipeline_path": lambda: engine.save_pipeline(loaded, path),
        "trainrun_path": lambda: engine.save_trainrun(loaded, path),
        "weights_path": lambda: engine.load_weights(loaded, path, None),
        "path": lambda: engine.resolve_config(loaded, "pipeline", path),
    }
    calls["trainrun_path "] = lambda: engine.restore_trainrun(path)  # RestoreTrainRun, same field name
    for field, call in calls.items():
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == field.strip()
        assert "too long" in info.value.message
        assert len(info.value.message) < 300, "the path is shortened in the message, not echoed whole"
    assert files_under(engine.output_dir) == []


def test_the_message_states_the_length_and_the_limit(engine, loaded):
    with pytest.raises(InvalidArgument) as info:
        engine.save_pipeline(loaded, LONG)
    assert info.value.message == TOO_LONG


def test_long_search_paths_are_rejected_not_an_error(engine, loaded):
    paths = engine.set_search_paths(loaded, [LONG, LONG_NAME, "\x00"], append=True)
    assert list(paths.rejected) == [LONG, LONG_NAME, "\x00"]
    assert paths.current  # the session keeps its search paths


def test_a_save_whose_companion_files_would_not_fit_writes_nothing(engine, loaded):
    # 250 characters fit NAME_MAX, "<stem>_pipeline.yaml" next to it does not
    with pytest.raises(InvalidArgument) as info:
        engine.save_trainrun(loaded, "c" * 250)
    assert info.value.field == "trainrun_path"
    assert files_under(engine.output_dir) == []


@pytest.mark.parametrize("path", [".", "/", "sub/.."])
def test_paths_that_name_no_file_are_invalid_argument(engine, loaded, path):
    for call, field in [
        (lambda: engine.restore_trainrun(path), "trainrun_path"),
        (lambda: engine.resolve_config(loaded, "pipeline", path), "path"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == field


@pytest.mark.parametrize("depth", [101, 5000, 100_000])
def test_deeply_nested_configs_are_invalid_argument(engine, loaded, depth):
    text = '{"a":' * depth + "1" + "}" * depth
    with pytest.raises(InvalidArgument, match="config: the config is nested deeper than 100 levels"):
        engine.load_pipeline(loaded, text.encode())
    with pytest.raises(InvalidArgument, match="config: the config is nested deeper than 100 levels"):
        engine.set_trainrun(loaded, text.encode())
    assert not engine.validate_config("pipeline", text.encode()).valid


def test_a_pipeline_with_wrongly_typed_sections_is_invalid_argument(engine, loaded):
    config = engine.resolve_config(loaded, "pipeline", "rx_statistical")
    for key, junk in [("connections", 1), ("nodes", "x"), ("nodes", 3.5)]:
        with pytest.raises(InvalidArgument):
            engine.load_pipeline(loaded, json.dumps({**config, key: junk}).encode())
