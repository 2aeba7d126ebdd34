"""Policy over every workload the chart renders, in every entry of the values matrix: resources,
probes, non-root, read-only root filesystem, pinned images, and the exact CUVIS_* settings."""

from __future__ import annotations

import math
import os
import re

import pytest
from _deploy_support import CI_VALUES, matrix_name

from cuvis_cluster.common.settings import GatewaySettings, WorkerSettings

MATRIX = sorted(matrix_name(p) for p in CI_VALUES)
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
ROLES = {"gateway": GatewaySettings, "worker": WorkerSettings}
# Variables that only feed $(...) interpolation inside a CUVIS_* value; the binaries never read them.
HELPERS = {"POD_IP", "REDIS_PASSWORD"}


def pod_specs(objects):
    """(label, pod spec, is a hook) of every workload."""
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        if kind not in WORKLOAD_KINDS:
            continue
        hook = "helm.sh/hook" in (meta.get("annotations") or {})
        if kind == "Pod":
            spec = obj["spec"]
        elif kind == "CronJob":
            spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        else:
            spec = obj["spec"]["template"]["spec"]
        yield f"{kind}/{meta['name']}", spec, hook


@pytest.fixture(params=MATRIX)
def rendering(request, renderings):
    return renderings[request.param]


def test_there_are_workloads(rendering):
    labels = [label for label, _, _ in pod_specs(rendering.objects)]
    assert any(label.endswith("-gateway") for label in labels) and any(
        label.endswith("-worker") for label in labels
    )


def test_resources_are_set(rendering):
    for label, spec, _ in pod_specs(rendering.objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            res = c.get("resources") or {}
            requests, limits = res.get("requests") or {}, res.get("limits") or {}
            assert {"cpu", "memory"} <= set(requests), f"{label}/{c['name']}: requests {requests}"
            assert "memory" in limits, f"{label}/{c['name']}: no memory limit"
            for name, amount in limits.items():
                if "/" in name:  # extended resources (GPUs): requests must equal limits
                    assert requests.get(name) == amount, f"{label}: {name} requests != limits"


def test_probes_are_set(rendering):
    for label, spec, hook in pod_specs(rendering.objects):
        if hook:  # a one-shot test pod has nothing to probe
            continue
        for c in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{label}/{c['name']}: no {probe}"


def test_non_root_read_only_no_capabilities(rendering):
    for label, spec, _ in pod_specs(rendering.objects):
        pod = spec.get("securityContext") or {}
        assert pod.get("runAsNonRoot") is True, label
        assert pod.get("runAsUser", 0) != 0, label
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
        assert spec.get("automountServiceAccountToken") is False, label
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), label
        assert not any("hostPath" in v for v in spec.get("volumes", [])), label
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext") or {}
            assert sc.get("readOnlyRootFilesystem") is True, f"{label}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{label}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}/{c['name']}"
            assert not sc.get("capabilities", {}).get("add"), f"{label}/{c['name']}"
            assert not sc.get("privileged"), f"{label}/{c['name']}"
            assert sc.get("runAsUser", pod.get("runAsUser")) != 0, f"{label}/{c['name']}"


def test_images_are_pinned(rendering):
    for label, spec, _ in pod_specs(rendering.objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            image = c["image"]
            if "@sha256:" in image:
                continue
            _, sep, tag = image.rpartition(":")
            assert sep and "/" not in tag, f"{label}: {image} has no tag"
            assert tag != "latest", f"{label}: {image}"
            assert re.search(r"\d", tag), f"{label}: {image} is not a version tag"


def _role(label):
    for role in ROLES:
        if label.endswith(f"-{role}") and label.startswith("Deployment/"):
            return role
    return None


def test_env_names_are_the_settings_the_code_reads(rendering):
    for label, spec, _ in pod_specs(rendering.objects):
        role = _role(label)
        if role is None:
            continue
        (container,) = spec["containers"]
        env = container.get("env", [])
        names = [e["name"] for e in env]
        assert len(names) == len(set(names)), f"{label}: duplicate env {names}"
        unknown = set(names) - ROLES[role].env_names() - HELPERS
        assert not unknown, f"{label}: env the binary does not read: {sorted(unknown)}"
        assert "envFrom" not in container, f"{label}: envFrom hides which settings are set"
        for helper in set(names) & HELPERS:
            users = [
                e for e in env if e["name"].startswith("CUVIS_") and f"$({helper})" in e.get("value", "")
            ]
            assert users, f"{label}: {helper} is set but feeds no CUVIS_* value"


def test_every_setting_is_rendered_somewhere_in_the_matrix(renderings):
    """Over the whole matrix each binary gets exactly its settings: the union of rendered CUVIS_*
    names equals WorkerSettings/GatewaySettings.env_names()."""
    for role, cls in ROLES.items():
        seen = set()
        for rendering in renderings.values():
            seen |= {n for n in rendering.env(role) if n.startswith("CUVIS_")}
        assert seen == cls.env_names(), (
            f"{role}: missing {cls.env_names() - seen}, extra {seen - cls.env_names()}"
        )


def _resolved_env(env, pod_ip="10.1.2.3"):
    """The values the process would see: secrets stand in as 'secret', $(VAR) expanded."""
    values = {}
    for e in env:
        if "value" in e:
            value = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            value = pod_ip
        else:
            value = "redis://:secret@redis:6379/0" if e["name"] == "CUVIS_REDIS_URL" else "secret"
        values[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), value)
    return values


def test_the_binaries_accept_the_rendered_settings(rendering, monkeypatch):
    """Load the rendered env into the real settings classes: every value must validate."""
    for label, spec, _ in pod_specs(rendering.objects):
        role = _role(label)
        if role is None:
            continue
        env = _resolved_env(spec["containers"][0].get("env", []))
        for name in list(os.environ):
            if name.startswith("CUVIS_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("CUVIS_"):
                monkeypatch.setenv(name, value)
        settings = ROLES[role]()
        assert settings.listen.endswith(f":{spec['containers'][0]['ports'][0]['containerPort']}")
        assert settings.metrics_port == spec["containers"][0]["ports"][1]["containerPort"]
        if role == "worker":
            assert settings.advertised_address.rsplit(":", 1)[0].strip("[]") == "10.1.2.3"
        # Kubernetes waits long enough for the drain to finish.
        pre_stop = (
            spec["containers"][0].get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        )
        sleep = int(pre_stop[-1]) if pre_stop else 0
        assert spec["terminationGracePeriodSeconds"] >= sleep + math.ceil(settings.grace_seconds), label


def test_setting_files_live_on_mounted_volumes(rendering):
    """Every directory or file a setting names is inside one of the container's mounts."""
    for label, spec, _ in pod_specs(rendering.objects):
        if _role(label) is None:
            continue
        container = spec["containers"][0]
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for e in container.get("env", []):
            if re.search(r"_(DIR|FILE|CERT|KEY|CA)$", e["name"]) and "value" in e:
                path = e["value"]
                assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
                    f"{label}: {e['name']}={path} is on no mount ({mounts})"
                )


def test_recommended_labels_everywhere(rendering):
    for obj in rendering.objects:
        labels = obj["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
        ):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
