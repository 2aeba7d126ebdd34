"""The documentation stays true: generated API reference up to date, tables complete, links valid."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from cuvis_cluster.client import apidoc
from cuvis_cluster.client._errors import exit_code_for

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_api_reference_is_generated_from_the_current_proto():
    current = (DOCS / "api-reference.md").read_text()
    assert current == apidoc.render(), (
        "docs/api-reference.md is stale: run python -m cuvis_cluster.client.apidoc"
    )


def test_api_reference_documents_every_rpc_and_message():
    from cuvis_cluster.wire.pb import control_pb2, pb

    text = (DOCS / "api-reference.md").read_text()
    service = pb.DESCRIPTOR.services_by_name["CuvisAIService"]
    for method in service.methods:
        assert f"#### `CuvisAIService.{method.name}`" in text
    for name in pb.DESCRIPTOR.message_types_by_name:
        assert f"#### `{name}`" in text
    for name in pb.DESCRIPTOR.enum_types_by_name:
        assert f"#### `{name}` (enum)" in text
    assert "#### `ClusterStatusService.ListWorkers`" in text
    assert control_pb2.DESCRIPTOR.services_by_name["WorkerControlService"]
    # Every RPC has its comment rendered (no bare signatures).
    sections = re.split(r"\n#### `CuvisAIService\.", text)[1:]
    for section in sections:
        body = section.split("\n<a id=", 1)[0]
        lines = [
            line for line in body.splitlines()[1:] if line.strip() and not line.startswith(("`rpc", "*SDK"))
        ]
        assert lines, f"no description for {section.splitlines()[0]}"


def test_apidoc_check_mode(tmp_path):
    target = tmp_path / "api.md"
    assert apidoc.main(["--out", str(target), "--check"]) == 1
    assert apidoc.main(["--out", str(target)]) == 0
    assert apidoc.main(["--out", str(target), "--check"]) == 0


def test_troubleshooting_covers_every_status_code_with_its_exit_code():
    text = (DOCS / "troubleshooting.md").read_text()
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert re.search(rf"^\| {code.name} \({exit_code_for(code)}\) \|", text, re.M), code.name


def test_client_doc_exit_table_matches_the_cli():
    text = (DOCS / "client.md").read_text()
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert re.search(rf"^\| {exit_code_for(code)} \| {code.name} \|", text, re.M), code.name


def test_client_doc_lists_exactly_the_retried_methods():
    from cuvis_cluster.client import IDEMPOTENT_METHODS, RETRY_EXCLUDED

    text = (DOCS / "client.md").read_text()
    retried = text.split("because repeating them can never change anything on the server:", 1)[1]
    retried = retried.split("(and the internal", 1)[0]
    assert {m.strip(" ,\n") for m in retried.split(",")} == set(IDEMPOTENT_METHODS)
    for method in RETRY_EXCLUDED:
        assert f"| `{method}` |" in text


def test_quickstart_lists_every_example():
    listed = set(re.findall(r"`examples/(\w+)\.py`", (DOCS / "quickstart.md").read_text()))
    present = {p.stem for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_")}
    assert listed == present


def test_relative_links_resolve():
    owned_elsewhere = {"gateway-design.md"}  # written by the gateway work; linked before it lands
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if Path(target).name in owned_elsewhere and not (page.parent / target).exists():
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
