"""A pipeline's class_name is untrusted text: importing it must never run code outside the allow-list."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.engine.nodes import classes
from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.errors import InvalidArgument

CANARY = "h2_canary_pkg"

REFUSED = [
    "os.system",
    "subprocess.Popen",
    "builtins.eval",
    "posix.system",
    "cuvis_ai.__class__",
    "cuvis_ai.__builtins__.eval",
    "cuvis_ai.node.__init__",
    ".cuvis_ai.node.X",
    "..node.X",
    "cuvis_ai..node.X",
    "cuvis_ai.node.X;import os",
    "cuvis_ai.node.X os",
    "cuvis_ai/node/X",
    "cuvis_ai.node.X\n",
    "cuvis_ai_evil.node.X",  # a prefix of the package name is not the package
    "cuvis_aiX.Y",
    "__import__",
    "eval",
    "",
]


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A package on sys.path whose import writes a file: proof of whether anything executed."""
    witness = tmp_path / "executed"
    pkg = tmp_path / "src" / CANARY
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(witness)!r}, 'w').write('imported')\nclass Node: pass\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield witness
    sys.modules.pop(CANARY, None)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_names_name_the_class_and_the_node(name: str) -> None:
    before = set(sys.modules)
    with pytest.raises(InvalidArgument) as info:
        NodeRegistry().create(name, "evil", {})
    assert info.value.field == "evil"
    assert repr(name)[1:-1] in str(info.value) or not name
    assert set(sys.modules) == before, "a refused class_name imported a module"


def test_a_module_outside_the_allow_list_is_never_imported(canary: Path) -> None:
    with pytest.raises(InvalidArgument, match="allow-listed"):
        NodeRegistry().create(f"{CANARY}.Node", "n", {})
    assert not canary.exists() and CANARY not in sys.modules


def test_the_canary_does_fire_when_its_package_is_allowed(canary: Path) -> None:
    # Control for the test above: the same name, allow-listed, imports the module (and is still refused,
    # since its class is not a cuvis_ai_core Node).
    with pytest.raises(InvalidArgument, match="not a node class"):
        NodeRegistry(packages=("cuvis_ai", CANARY)).create(f"{CANARY}.Node", "n", {})
    assert canary.read_text() == "imported"


def test_allowed_package_but_not_a_node_class_is_refused() -> None:
    # cuvis_ai.node.monitor imports Path from pathlib: importable, but not a Node subclass.
    with pytest.raises(InvalidArgument, match="not a node class"):
        NodeRegistry().create("cuvis_ai.node.monitor.Path", "p", {})
    with pytest.raises(InvalidArgument, match="no module"):
        NodeRegistry().create("cuvis_ai.no_such_module.Thing", "t", {})


def test_an_empty_allow_list_refuses_cuvis_ai_too() -> None:
    with pytest.raises(InvalidArgument, match="allow-listed"):
        NodeRegistry(packages=()).create("cuvis_ai.node.normalization.ZScoreNormalizer", "z", {})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_arbitrary_text_passes_only_as_a_cuvis_ai_dotted_name(text: str) -> None:
    try:
        module, attr = classes.check_name(text, ("cuvis_ai",), "n")
    except InvalidArgument:
        return
    assert text == f"{module}.{attr}"
    assert module.split(".")[0] == "cuvis_ai"
    assert all(p.isidentifier() and not p.startswith("__") for p in text.split("."))


def test_engine_config_sets_the_allow_list(tmp_path) -> None:
    from cuvis_cluster.engine.facade import Engine, EngineConfig

    (tmp_path / "data").mkdir()
    engine = Engine(
        EngineConfig(
            configs_dir=tmp_path,
            data_dir=tmp_path / "data",
            output_dir=tmp_path / "out",
            class_packages=[],
            device="cpu",
        )
    )
    try:
        session = engine.sessions.get(engine.create_session())
        assert session.registry.packages == ()
        with pytest.raises(InvalidArgument, match="allow-listed"):
            session.registry.create("cuvis_ai.node.normalization.ZScoreNormalizer", "z", {})
    finally:
        engine.shutdown()


def test_the_setting_reaches_the_worker_settings(monkeypatch) -> None:
    from cuvis_cluster.common.settings import WorkerSettings

    monkeypatch.setenv("CUVIS_CLASS_PACKAGES", '["cuvis_ai", "my_lab_nodes"]')
    assert WorkerSettings().class_packages == ["cuvis_ai", "my_lab_nodes"]
