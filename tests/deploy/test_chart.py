"""The Helm chart: lint, schema, Kubernetes schema validation over the values matrix, and what each
matrix entry must produce."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml
from _deploy_support import CHART, CI_VALUES, CRD_KINDS, KUBE_VERSIONS, matrix_name, run

from cuvis_cluster.common.settings import GatewaySettings, WorkerSettings, helm_name

REQUIRED_MATRIX = {"default", "external-redis", "tls-mtls", "cpu-only", "hpa-off", "persistence"}


def test_matrix_holds_the_required_entries():
    assert {matrix_name(p) for p in CI_VALUES} >= REQUIRED_MATRIX


def test_helm_lint_strict(helm):
    proc = run([helm, "lint", "--strict", str(CHART)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=matrix_name)
def test_helm_lint_strict_with_matrix_values(helm, values):
    proc = run([helm, "lint", "--strict", str(CHART), "--values", str(values)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(matrix_name(p) for p in CI_VALUES))
def test_rendering_validates_strictly(renderings, name, version):
    """Every object passes kubernetes-validate --strict; only the known CRDs lack a schema."""
    problems = []
    for obj in renderings[name].objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if obj["kind"] not in CRD_KINDS:
                problems.append(f"{label}: no schema in Kubernetes {version}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_kubernetes_validate_cli_on_defaults(helm, defaults):
    """The command line as the issue names it, once: helm template | kubernetes-validate --strict."""
    import shutil
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "kubernetes-validate"
    exe = str(cli) if cli.exists() else shutil.which("kubernetes-validate")
    assert exe, "kubernetes-validate is a dev dependency (pip install -e .[dev])"
    for version in KUBE_VERSIONS:
        proc = run([exe, "--strict", "--quiet", "-k", version, "-"], input=defaults.text)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_template_is_covered_by_the_matrix(renderings):
    sources = set()
    for rendering in renderings.values():
        sources |= set(re.findall(r"^# Source: cuvis-ai/(templates/\S+)$", rendering.text, re.M))
    templates = {
        p.relative_to(CHART).as_posix()
        for p in (CHART / "templates").rglob("*")
        if p.is_file() and p.suffix == ".yaml"
    }
    assert templates - sources == set(), "templates no matrix entry renders"


# ---------------------------------------------------------------------------------------- schema


def _schema():
    return json.loads((CHART / "values.schema.json").read_text())


def _value_leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _value_leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _schema_node(schema, path):
    node = schema
    for part in path.split("."):
        props = node.get("properties")
        if props is None:  # a free-form map (annotations, nodeSelector, files): its keys are data
            return node
        assert part in props, f"values.yaml key {path!r} is not described in values.schema.json"
        node = props[part]
    return node


def test_schema_describes_every_value():
    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_leaves(values):
        node = _schema_node(schema, path)
        assert node.get("description"), f"{path} has no description"


def test_schema_objects_refuse_unknown_keys():
    def walk(node, path):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} accepts unknown keys"
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}" if path else key)

    walk(_schema(), "")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("gateway.replicaz=3", "replicaz"),
        ("worker.image.tag=latest", "/worker/image/tag"),
        ("worker.config.maxSessions=0", "/worker/config/maxSessions"),
        ("worker.config.device=tpu", "/worker/config/device"),
        ("redis.external.url=redis://user:pw@host:6379", "/redis/external/url"),
    ],
)
def test_schema_refuses_bad_values(helm, setting, message):
    proc = run([helm, "template", "x", str(CHART), "--set", setting])
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_defaults_without_required_inputs_fail_with_a_clear_message(helm):
    cases = {
        "redis.enabled=false": "redis.external.url",
        "tls.gateway.enabled=true": "tls.gateway.existingSecret or tls.certManager.enabled",
        "tls.workers.enabled=true": "tls.workers.existingSecret or tls.certManager.enabled",
        "gateway.grpcRoute.enabled=true": "gateway.grpcRoute.parentRefs",
    }
    for setting, message in cases.items():
        proc = run([helm, "template", "x", str(CHART), "--set", setting])
        assert proc.returncode != 0 and message in proc.stderr, (setting, proc.stderr)


# ---------------------------------------------------------------------------------------- settings <-> values

# Settings the chart sets from other values instead of a `config` key.
DERIVED = {
    "gateway": {
        "listen",
        "metrics_port",
        "metrics_host",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "redis_url",
        "auth_token_file",
        "worker_tls_ca",
        "worker_tls_cert",
        "worker_tls_key",
        "worker_tls_server_name",
        "cluster_token_file",
    },
    "worker": {
        "listen",
        "metrics_port",
        "metrics_host",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "redis_url",
        "advertise",
        "configs_dir",
        "data_dir",
        "output_dir",
        "cluster_token_file",
    },
}
# Chart defaults that differ from the binaries' on purpose.
CHART_DEFAULTS = {("worker", "graceSeconds"): 60.0}


@pytest.mark.parametrize(("role", "cls"), [("gateway", GatewaySettings), ("worker", WorkerSettings)])
def test_config_values_are_exactly_the_settings(role, cls):
    """Each config key is a setting of that binary, and every setting is either a config key or set
    by the chart from other values: a new setting fails here until the chart knows it."""
    schema = _schema()["properties"]
    keys = set(schema["config"]["properties"]) | set(schema[role]["properties"]["config"]["properties"])
    by_helm = {helm_name(f): f for f in cls.model_fields}
    assert keys - set(by_helm) == set(), f"{role}.config keys the binary does not read"
    covered = {by_helm[k] for k in keys} | DERIVED[role]
    assert set(cls.model_fields) - covered == set(), f"settings of cuvis-{role} the chart cannot set"
    assert DERIVED[role] <= set(cls.model_fields)


@pytest.mark.parametrize(("role", "cls"), [("gateway", GatewaySettings), ("worker", WorkerSettings)])
def test_config_defaults_match_the_binaries(role, cls):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    merged = {**values["config"], **values[role]["config"]}
    by_helm = {helm_name(f): f for f in cls.model_fields}
    for key, value in merged.items():
        field = cls.model_fields[by_helm[key]]
        default = field.get_default(call_default_factory=True)
        expected = CHART_DEFAULTS.get((role, key), default)
        assert value == expected, f"{role}.config.{key}: chart {value!r}, binary {default!r}"


# ---------------------------------------------------------------------------------------- matrix behaviour


def test_defaults_request_one_gpu_per_worker(defaults):
    resources = defaults.container("worker")["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    spec = defaults.get("Deployment", "-worker")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_cpu_only_workers_ask_for_no_gpu(renderings):
    cpu = renderings["cpu-only"]
    assert "nvidia.com/gpu" not in cpu.text
    assert cpu.env("worker")["CUVIS_DEVICE"]["value"] == "cpu"
    assert cpu.container("worker")["image"].endswith(":0.1.0-cpu")


def test_gpu_off_never_lets_auto_pick_a_gpu(helm):
    proc = run(
        [
            helm,
            "template",
            "x",
            str(CHART),
            "--set",
            "worker.gpu.enabled=false",
            "--show-only",
            "templates/worker-deployment.yaml",
        ]
    )
    env = {
        e["name"]: e.get("value")
        for e in yaml.safe_load(proc.stdout)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CUVIS_DEVICE"] == "cpu"


def test_hpa_on_by_default_and_off_in_hpa_off(defaults, renderings):
    hpa = defaults.get("HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == defaults.get("Deployment", "-gateway")["metadata"]["name"]
    assert "replicas" not in defaults.get("Deployment", "-gateway")["spec"], "the HPA owns the replica count"
    off = renderings["hpa-off"]
    assert off.of_kind("HorizontalPodAutoscaler") == []
    assert off.get("Deployment", "-gateway")["spec"]["replicas"] == 3


def test_custom_metric_scales_the_gateway(renderings):
    metrics = renderings["features"].get("HorizontalPodAutoscaler", "-gateway")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"]["metric"]["name"] == "cuvis_gateway_rpc_in_flight"


def test_workers_advertise_their_pod_ip(defaults, renderings):
    env = defaults.env("worker")
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CUVIS_ADVERTISE"]["value"] == "$(POD_IP):50051"
    names = list(env)
    assert names.index("POD_IP") < names.index("CUVIS_ADVERTISE"), "Kubernetes expands only earlier vars"
    assert renderings["features"].env("worker")["CUVIS_ADVERTISE"]["value"] == "[$(POD_IP)]:50051"


def test_bundled_redis_url_comes_from_the_secret(defaults):
    env = defaults.env("gateway")
    secret = defaults.get("Secret", "-redis-auth")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "redis-password",
    }
    assert env["CUVIS_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@cuvis-cuvis-ai-redis:6379/0"
    assert defaults.env("worker")["CUVIS_REDIS_URL"] == env["CUVIS_REDIS_URL"]
    args = defaults.get("StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"


def test_external_redis(renderings):
    ext = renderings["external-redis"]
    assert ext.of_kind("StatefulSet") == []
    assert [s["metadata"]["name"] for s in ext.of_kind("Secret")] == ["cuvis-cuvis-ai-cluster-token"]
    assert not any(o["metadata"]["name"].endswith("-redis") for o in ext.objects)
    for component in ("gateway", "worker"):
        env = ext.env(component)
        assert (
            env["CUVIS_REDIS_URL"]["value"]
            == "rediss://cuvis:$(REDIS_PASSWORD)@redis.example.internal:6380/0"
        )
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "cuvis-redis-credentials",
            "key": "password",
        }
    url_secret = renderings["features"].env("gateway")["CUVIS_REDIS_URL"]
    assert url_secret["valueFrom"]["secretKeyRef"] == {"name": "cuvis-redis-url", "key": "url"}


def _mounted_secrets(rendering, component):
    """mount path -> secret name of a component's secret volumes."""
    spec = rendering.get("Deployment", f"-{component}")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        m["mountPath"]: secrets[m["name"]]
        for m in spec["containers"][0]["volumeMounts"]
        if m["name"] in secrets
    }


def test_tls_and_mtls_files_come_from_the_certificates(renderings):
    tls = renderings["tls-mtls"]
    certs = {c["spec"]["secretName"]: c for c in tls.of_kind("Certificate")}
    assert len(certs) == 3
    gateway, worker = _mounted_secrets(tls, "gateway"), _mounted_secrets(tls, "worker")
    genv, wenv = tls.env("gateway"), tls.env("worker")
    # Every TLS file a binary reads lies in a mounted Secret that a Certificate fills.
    for mounts, env in ((gateway, genv), (worker, wenv)):
        for name, entry in env.items():
            if "TLS" in name and name != "CUVIS_WORKER_TLS_SERVER_NAME":
                directory, _, key = entry["value"].rpartition("/")
                assert directory in mounts, f"{name}={entry['value']} is not in a mounted Secret"
                assert mounts[directory] in certs, f"{name}: Secret {mounts[directory]} is issued by nobody"
                assert key in {"tls.crt", "tls.key", "ca.crt"}
    assert {
        "CUVIS_TLS_CERT",
        "CUVIS_TLS_KEY",
        "CUVIS_TLS_CLIENT_CA",
        "CUVIS_WORKER_TLS_CA",
        "CUVIS_WORKER_TLS_CERT",
        "CUVIS_WORKER_TLS_KEY",
        "CUVIS_AUTH_TOKEN_FILE",
    } <= set(genv)
    assert {"CUVIS_TLS_CERT", "CUVIS_TLS_KEY", "CUVIS_TLS_CLIENT_CA"} <= set(wenv)
    server_name = genv["CUVIS_WORKER_TLS_SERVER_NAME"]["value"]
    assert server_name == "cuvis-cuvis-ai-worker.ai.svc"
    worker_cert = certs[worker["/etc/cuvis/tls/server"]]
    assert server_name in worker_cert["spec"]["dnsNames"]
    assert "client auth" in certs[gateway["/etc/cuvis/tls/worker-client"]]["spec"]["usages"]
    # kubelet's gRPC probe cannot do TLS: readiness becomes the exec health check.
    for component in ("gateway", "worker"):
        probe = tls.container(component)["readinessProbe"]
        assert probe["exec"]["command"][:3] == ["python", "-m", "cuvis_cluster.deploy.healthcheck"]


def test_plaintext_readiness_is_the_native_grpc_probe(defaults):
    for component, port in (("gateway", 50050), ("worker", 50051)):
        container = defaults.container(component)
        assert container["readinessProbe"]["grpc"] == {"port": port}
        # Liveness must survive NOT_SERVING (Redis down): the exec check in alive mode.
        assert "--mode" in container["livenessProbe"]["exec"]["command"]
        assert container["livenessProbe"]["exec"]["command"][-3] == "alive"


def test_persistence(renderings, defaults):
    pers = renderings["persistence"]
    spec = pers.get("Deployment", "-worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "hsi-datasets", "readOnly": True}
    assert mounts["data"]["readOnly"] is True
    assert not mounts["outputs"].get("readOnly")
    pvcs = {p["metadata"]["name"]: p for p in pers.of_kind("PersistentVolumeClaim")}
    assert set(pvcs) == {volumes["outputs"]["persistentVolumeClaim"]["claimName"]}
    outputs = next(iter(pvcs.values()))
    assert outputs["spec"]["accessModes"] == ["ReadWriteMany"]
    assert outputs["spec"]["storageClassName"] == "nfs-client"
    assert outputs["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    redis = pers.get("StatefulSet", "-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert defaults.of_kind("PersistentVolumeClaim") == []


def test_configs_configmap_rebuilds_the_tree(defaults, renderings):
    bundled = sorted(
        p.relative_to(CHART / "files" / "configs").as_posix()
        for p in (CHART / "files" / "configs").rglob("*")
        if p.suffix in (".yaml", ".yml")
    )
    cm = defaults.get("ConfigMap", "-configs")
    volume = next(
        v
        for v in defaults.get("Deployment", "-worker")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "configs"
    )
    items = {i["key"]: i["path"] for i in volume["configMap"].get("items", [])}
    assert sorted(items.values()) == bundled
    for key, path in items.items():
        assert cm["data"][key] == (CHART / "files" / "configs" / path).read_text(), (
            "content must be byte-exact"
        )
    extra = renderings["features"].get("ConfigMap", "-configs")
    assert extra["data"]["pipeline__extra.yaml"].strip() == "name: extra"


def test_network_policies(defaults):
    pols = {p["metadata"]["name"].rsplit("-", 1)[-1]: p["spec"] for p in defaults.of_kind("NetworkPolicy")}
    gateway_pods = defaults.get("Deployment", "-gateway")["spec"]["selector"]["matchLabels"]
    worker_pods = defaults.get("Deployment", "-worker")["spec"]["selector"]["matchLabels"]
    grpc_rule, metrics_rule = pols["worker"]["ingress"]
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": gateway_pods}}]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    (redis_rule,) = pols["redis"]["ingress"]
    assert redis_rule["from"] == [
        {"podSelector": {"matchLabels": gateway_pods}},
        {"podSelector": {"matchLabels": worker_pods}},
    ]
    assert "from" not in pols["gateway"]["ingress"][0], "clients reach the gateway from anywhere by default"


def test_gateway_service_and_routes(defaults, renderings):
    (port,) = defaults.get("Service", "-gateway")["spec"]["ports"]
    assert port["appProtocol"] == "grpc" and port["targetPort"] == "grpc"
    assert defaults.get("Service", "-gateway")["spec"]["type"] == "ClusterIP"
    features = renderings["features"]
    svc = features.get("Service", "-gateway")["spec"]
    assert svc["type"] == "LoadBalancer" and svc["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    ingress = features.get("Ingress", "-gateway")
    # TLS to the gateway pods is on in this entry: nginx must speak gRPC over TLS to them.
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    route = features.get("GRPCRoute", "-gateway")
    assert (
        route["spec"]["rules"][0]["backendRefs"][0]["name"]
        == features.get("Service", "-gateway")["metadata"]["name"]
    )


def test_gateway_spread_and_disruption_budget(defaults):
    spec = defaults.get("Deployment", "-gateway")["spec"]["template"]["spec"]
    keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
    assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert defaults.get("PodDisruptionBudget", "-gateway")["spec"]["minAvailable"] == 1
    assert defaults.get("PodDisruptionBudget", "-worker")["spec"]["maxUnavailable"] == 1


def test_monitoring_objects(renderings):
    features = renderings["features"]
    monitors = features.of_kind("ServiceMonitor")
    assert len(monitors) == 2
    services = {s["metadata"]["name"]: s for s in features.of_kind("Service")}
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        assert "metrics" in {p["name"] for p in matched[0]["spec"]["ports"]}
        assert monitor["spec"]["jobLabel"] in matched[0]["metadata"]["labels"]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    jobs = {
        services_label
        for m in monitors
        for services_label in [m["spec"]["selector"]["matchLabels"]["cuvis.ai/job"]]
    }
    assert jobs == {"cuvis-gateway", "cuvis-worker"}
    dashboard = features.get("ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["cuvis-ai.json"]) == json.loads(
        (CHART / "dashboards/cuvis-ai.json").read_text()
    )
    rule = features.get("PrometheusRule", "")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    for group in alerts["groups"]:
        for r in group["rules"]:
            r["labels"] = {**r.get("labels", {}), "team": "imaging"}
    assert rule["spec"]["groups"] == alerts["groups"]


def test_notes_show_grpcurl(helm):
    plain = run([helm, "install", "cuvis", str(CHART), "--dry-run=client", "--namespace", "ai"])
    assert plain.returncode == 0, plain.stderr
    assert "grpcurl -plaintext $CUVIS_ADDR grpc.health.v1.Health/Check" in plain.stdout
    assert "grpcurl -plaintext $CUVIS_ADDR describe cuvis_ai.v1.CuvisAIService" in plain.stdout
    tls = run(
        [
            helm,
            "install",
            "cuvis",
            str(CHART),
            "--dry-run=client",
            "--namespace",
            "ai",
            "--values",
            str(CHART / "ci" / "tls-mtls-values.yaml"),
        ]
    )
    assert tls.returncode == 0, tls.stderr
    assert "grpcurl -cacert ca.crt -cert client.crt -key client.key" in tls.stdout
