"""k8s/ is generated from the chart: it must be current, kustomize must build each overlay into exactly
what helm renders for it, and the result must validate."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from _deploy_support import CRD_KINDS, KUBE_VERSIONS, run
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.deploy import render_k8s
from cuvis_cluster.deploy.tools import REPO_ROOT

TARGETS = [None, *render_k8s.OVERLAYS]


def _dir(name):
    return render_k8s.K8S / ("base" if name is None else f"overlays/{name}")


def test_generated_files_are_current(helm):
    """k8s/, the chart's copy of configs/ and the README values table match their sources."""
    stale = render_k8s.stale(render_k8s.plan(helm))
    assert not stale, "stale, run `python -m cuvis_cluster.deploy.render_k8s`: " + ", ".join(
        str(p.relative_to(REPO_ROOT)) for p in stale
    )


@pytest.fixture(scope="module")
def built(kubectl):
    out = {}
    for name in TARGETS:
        proc = run([kubectl, "kustomize", str(_dir(name))])
        assert proc.returncode == 0, proc.stderr
        out[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


@pytest.mark.parametrize("name", TARGETS, ids=lambda n: n or "base")
def test_kustomize_build_equals_helm_template(built, helm, name):
    expected = [render_k8s.namespace_object(), *render_k8s.render_overlay(name, helm=helm)]
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in built[name]}
    want = {(o["kind"], o["metadata"]["name"]): o for o in expected}
    assert set(by_key) == set(want)
    for key, obj in want.items():
        assert by_key[key] == obj, f"{key} differs between kustomize and helm"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", TARGETS, ids=lambda n: n or "base")
def test_overlays_validate_strictly(built, name, version):
    problems = []
    for obj in built[name]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if obj["kind"] not in CRD_KINDS:
                problems.append(f"{obj['kind']}: no schema")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_plain_manifests_carry_no_helm_traces():
    for path in render_k8s.K8S.rglob("*.yaml"):
        text = path.read_text()
        assert "helm.sh/" not in text and "managed-by: Helm" not in text, path


def test_overlay_image_tags_follow_the_app_version():
    app = yaml.safe_load((render_k8s.CHART / "Chart.yaml").read_text())["appVersion"]
    for path in render_k8s.VALUES_DIR.glob("*.yaml"):
        values = yaml.safe_load(path.read_text()) or {}
        for component in ("gateway", "worker"):
            tag = values.get(component, {}).get("image", {}).get("tag")
            assert tag is None or tag.startswith(app), (
                f"{path.name}: {component} tag {tag} vs appVersion {app}"
            )


# ---------------------------------------------------------------------------------------- JSON patch

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b", "x/y", "t~1"]))
_keys = st.sampled_from(["a", "b", "name", "app.kubernetes.io/name", "x~y"])
_docs = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_docs, _docs)
def test_json_patch_turns_old_into_new(old, new):
    assert render_k8s.apply_json_patch(old, render_k8s.json_patch(old, new)) == new


def test_json_patch_guards_named_list_items():
    old = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    new = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]}
    ops = render_k8s.json_patch(old, new)
    assert ops == [
        {"op": "test", "path": "/env/1/name", "value": "B"},
        {"op": "replace", "path": "/env/1/value", "value": "3"},
    ]
    swapped = {"env": [old["env"][1], old["env"][0]]}
    with pytest.raises(ValueError, match="test failed"):
        render_k8s.apply_json_patch(swapped, ops)
