"""One configuration surface, checked for use and not only for declaration.

* every field of ``WorkerSettings`` / ``GatewaySettings`` is read by the code of that role (an
  attribute access ``<something>.<field>`` in the role's own package, ``common/`` or ``routing/``, outside
  ``common/settings.py``): a setting that is declared, rendered by the chart and read by nothing fails
  here, and so does a worker setting that only the gateway happens to read under the same name;
* no code under ``services/`` reads a ``CUVIS_*`` variable from ``os.environ`` / ``os.getenv`` except
  through the settings classes, so that flag, environment variable and Helm value stay one thing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import BaseModel

from cuvis_cluster.common.settings import GatewaySettings, WorkerSettings

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "cuvis_cluster"
SETTINGS_MODULE = Path("common/settings.py")
# Generated protobuf code reads no settings.
SKIPPED = (Path("wire/gen"),)

# Where each role's settings may be read: its own package and what it shares with the other role.
ROLE_PACKAGES = {
    WorkerSettings: (Path("worker"), Path("common"), Path("routing")),
    GatewaySettings: (Path("gateway"), Path("common"), Path("routing")),
}

# Fields allowed to be declared without being read, with the reason. Empty: every setting is used.
UNREAD_ALLOWED: dict[str, str] = {}

# Modules (or packages) allowed to read CUVIS_* variables themselves, with the reason.
ENV_READERS_ALLOWED = {
    Path("client"): "the client's own surface (client/settings.py, docs/client.md): CUVIS_ADDRESS, "
    "CUVIS_CA_FILE, ...; CUVIS_MAX_MESSAGE_BYTES is spelt as the servers' setting on purpose (the same "
    "limit, on the client's side of the connection)",
    Path("deploy/tools.py"): "developer tooling: CUVIS_HELM / CUVIS_KUBECTL / CUVIS_PROMTOOL locate the "
    "binaries the deployment tests run; no server reads them",
}


def sources(root: Path = PACKAGE) -> dict[Path, str]:
    """Every hand-written module under ``root`` (relative path -> text)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(rel.is_relative_to(skip) for skip in SKIPPED):
            continue
        out[rel] = path.read_text(encoding="utf-8")
    return out


def _attributes(tree: ast.AST) -> set[str]:
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def attributes_read(modules: dict[Path, str], *, settings: Path = SETTINGS_MODULE) -> set[str]:
    """Names ``x`` of every attribute access ``<something>.x`` outside the ``settings`` module, plus
    what a property of the settings module reads when that property is itself read outside it
    (``advertised_address`` reads ``advertise``)."""
    names: set[str] = set()
    for rel, text in modules.items():
        if rel != settings:
            names |= _attributes(ast.parse(text, filename=str(rel)))
    if settings in modules:
        for node in ast.walk(ast.parse(modules[settings])):
            is_property = isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
            )
            if is_property and node.name in names:
                names |= _attributes(node)
    return names


def unread_settings(cls: type[BaseModel], modules: dict[Path, str]) -> set[str]:
    """Fields of ``cls`` that no module reads."""
    return set(cls.model_fields) - attributes_read(modules) - set(UNREAD_ALLOWED)


def _is_os_environ(node: ast.expr) -> bool:
    """``os.environ`` or a bare ``environ`` (``from os import environ``)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _suspicious_key(key: ast.expr | None) -> str | None:
    """The key read, when it is (or may be) a CUVIS_* name: a literal CUVIS_* string, or any
    computed key (which could be one). ``None`` for a literal that is not a CUVIS_* name."""
    if key is None:
        return None
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value if key.value.startswith("CUVIS_") else None
    if isinstance(key, ast.JoinedStr):
        head = key.values[0] if key.values else None
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            prefix = head.value
            if not (prefix.startswith("CUVIS_") or "CUVIS_".startswith(prefix)):
                return None
    return ast.unparse(key)


def environment_reads(modules: dict[Path, str], *, settings: Path = SETTINGS_MODULE) -> list[str]:
    """``path:line: key`` for every read of a (possibly) CUVIS_* variable straight from the environment:
    ``os.environ[k]``, ``os.environ.get(k)``, ``os.environ.setdefault(k)``, ``os.getenv(k)``."""
    found: list[tuple[Path, int, str]] = []
    for rel, text in modules.items():
        if rel == settings:
            continue
        for node in ast.walk(ast.parse(text, filename=str(rel))):
            key: ast.expr | None = None
            if isinstance(node, ast.Subscript) and _is_os_environ(node.value):
                key = node.slice
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                environ_call = isinstance(func, ast.Attribute) and (
                    (func.attr in ("get", "setdefault", "pop") and _is_os_environ(func.value))
                    or (func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os")
                )
                if environ_call or (isinstance(func, ast.Name) and func.id == "getenv"):
                    key = node.args[0]
            name = _suspicious_key(key)
            if name is not None:
                found.append((rel, node.lineno, name))
    return [f"{rel}:{line}: {name}" for rel, line, name in sorted(found)]


# ------------------------------------------------------------------------------------------ the rules


def role_sources(cls: type[BaseModel]) -> dict[Path, str]:
    """The modules of ``cls``'s role (see ROLE_PACKAGES), settings.py included."""
    return {
        rel: text
        for rel, text in sources().items()
        if rel == SETTINGS_MODULE or any(rel.is_relative_to(p) for p in ROLE_PACKAGES[cls])
    }


@pytest.mark.parametrize("cls", [WorkerSettings, GatewaySettings], ids=["worker", "gateway"])
def test_every_setting_is_read_by_the_code(cls):
    unread = unread_settings(cls, role_sources(cls))
    assert not unread, (
        f"{cls.__name__} declares settings that no code under services/ reads: {sorted(unread)}. "
        "Use them, or remove them from the settings, the chart (values.yaml, values.schema.json) and "
        "the docs, then regenerate k8s/ (python -m cuvis_cluster.deploy.render_k8s)."
    )


def test_the_unread_allowance_names_real_fields():
    fields = set(WorkerSettings.model_fields) | set(GatewaySettings.model_fields)
    assert set(UNREAD_ALLOWED) <= fields


def test_cuvis_variables_are_read_only_through_the_settings():
    modules = sources()
    reads = [
        r
        for r in environment_reads(modules)
        if not any(Path(r.split(":", 1)[0]).is_relative_to(allowed) for allowed in ENV_READERS_ALLOWED)
    ]
    assert not reads, "CUVIS_* read outside common/settings.py (make it a settings field):\n" + "\n".join(
        reads
    )
    for allowed in ENV_READERS_ALLOWED:
        assert (PACKAGE / allowed).exists(), f"{allowed} is allowed to read CUVIS_* but no longer exists"


# --------------------------------------------------------------------------- the checks catch mistakes


class _Synthetic(BaseModel):
    used: int = 1
    declared_only: float = 2.0


def test_a_declared_but_unread_field_is_caught():
    modules = {
        SETTINGS_MODULE: (
            "class S:\n"
            "    declared_only = 2.0\n"
            "    @property\n"
            "    def never_read(self):\n"
            "        return self.declared_only\n"
        ),
        Path("gateway/main.py"): "def run(settings):\n    return settings.used\n",
    }
    # The settings module itself does not count as a reader.
    assert unread_settings(_Synthetic, modules) == {"declared_only"}
    # ... unless a property that reads it is read elsewhere.
    modules[Path("gateway/extra.py")] = "def g(s):\n    print(s.never_read)\n"
    assert unread_settings(_Synthetic, modules) == set()
    modules[Path("gateway/extra.py")] = "def g(s):\n    print(s.declared_only)\n"
    assert unread_settings(_Synthetic, modules) == set()


def test_environment_reads_are_caught():
    modules = {
        Path("gateway/main.py"): (
            "import os\n"
            "from os import environ, getenv\n"
            "a = os.environ.get('CUVIS_GATEWAY_LOOP', 'uvloop')\n"
            "b = os.environ['CUVIS_X']\n"
            "c = os.getenv('CUVIS_Y')\n"
            "d = environ.get(name)\n"
            "e = getenv(f'CUVIS_{n}')\n"
            "f = os.environ.get('HOME')\n"  # not a CUVIS_* name: fine
            "g = {k: v for k, v in os.environ.items() if not k.startswith('CUVIS_')}\n"  # a copy, no read
        ),
        SETTINGS_MODULE: "import os\nx = os.environ.get('CUVIS_OK')\n",
    }
    found = environment_reads(modules)
    assert [line.split(": ", 1)[0] for line in found] == [f"gateway/main.py:{n}" for n in (3, 4, 5, 6, 7)]


# ----------------------------------------------------------------------------- names from earlier releases


def test_a_renamed_environment_variable_stops_the_binary_naming_the_new_one(monkeypatch, capsys):
    monkeypatch.setenv("CUVIS_GATEWAY_LOOP", "asyncio")
    with pytest.raises(SystemExit) as exit_info:
        GatewaySettings.from_args([], prog="cuvis-gateway", description="")
    assert exit_info.value.code == 2
    assert "CUVIS_GATEWAY_LOOP was renamed CUVIS_EVENT_LOOP" in capsys.readouterr().err


def test_a_removed_environment_variable_is_ignored_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("CUVIS_TOUCH_INTERVAL_SECONDS", "30")
    settings = GatewaySettings.from_args([], prog="cuvis-gateway", description="")
    assert settings.event_loop == "uvloop"
    assert "CUVIS_TOUCH_INTERVAL_SECONDS is no longer a setting" in capsys.readouterr().err
