"""The chart configures the cluster credential by default: one Secret, mounted into gateway and worker pods
and named in CUVIS_CLUSTER_TOKEN_FILE, so workers refuse calls that do not come through a gateway."""

from __future__ import annotations

import base64

import pytest
import yaml
from _deploy_support import CHART, run

from cuvis_cluster.common.settings import GatewaySettings, WorkerSettings

TOKEN_FILE = "/etc/cuvis/cluster-token/token"


def render(helm: str, *sets: str) -> list[dict]:
    args = [helm, "template", "x", str(CHART), "--namespace", "ai"]
    for item in sets:
        args += ["--set", item]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def deployment(objects: list[dict], component: str) -> dict:
    (found,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith(f"-{component}")
    ]
    return found["spec"]["template"]["spec"]


def token_file_of(objects: list[dict], component: str) -> tuple[str | None, str | None]:
    """(CUVIS_CLUSTER_TOKEN_FILE, the Secret mounted at its directory) of a component's pod."""
    spec = deployment(objects, component)
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env.get("CUVIS_CLUSTER_TOKEN_FILE")
    if path is None:
        return None, None
    directory = path.rpartition("/")[0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    return path, volumes[mount["name"]]["secret"]["secretName"]


def secrets(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}


def test_on_by_default_with_one_generated_secret_for_gateways_and_workers(helm):
    objects = render(helm)
    gateway, worker = token_file_of(objects, "gateway"), token_file_of(objects, "worker")
    assert gateway == worker == (TOKEN_FILE, "x-cuvis-ai-cluster-token")
    secret = secrets(objects)["x-cuvis-ai-cluster-token"]
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32 and token.isalnum()
    # Only the pod's group (fsGroup, which the servers run in) may read it.
    volume = next(v for v in deployment(objects, "worker")["volumes"] if v["name"] == "cluster-token")
    assert volume["secret"]["defaultMode"] == 0o440


def test_the_generated_credential_is_random(helm):
    # Without a cluster to look the installed Secret up in, every render draws a new one (the same
    # caveat as the bundled Redis password under GitOps tools that render offline).
    first, second = (secrets(render(helm))["x-cuvis-ai-cluster-token"]["data"]["token"] for _ in range(2))
    assert first != second


def test_an_existing_secret_is_used_and_none_is_created(helm):
    objects = render(helm, "clusterAuth.existingSecret=my-credential", "clusterAuth.key=current")
    expected = ("/etc/cuvis/cluster-token/current", "my-credential")
    assert token_file_of(objects, "gateway") == token_file_of(objects, "worker") == expected
    assert not any("cluster-token" in name for name in secrets(objects))


def test_off_leaves_workers_trusting_any_caller(helm):
    objects = render(helm, "clusterAuth.enabled=false")
    assert token_file_of(objects, "gateway") == token_file_of(objects, "worker") == (None, None)
    assert not any("cluster-token" in name for name in secrets(objects))


def test_the_worker_probes_need_no_credential(helm):
    # Health stays open on a worker with the credential: kubelet's gRPC probe and the exec check
    # (python -m cuvis_cluster.deploy.healthcheck) send none.
    container = deployment(render(helm), "worker")["containers"][0]
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["exec"]["command"][:3] == [
        "python",
        "-m",
        "cuvis_cluster.deploy.healthcheck",
    ]


@pytest.mark.parametrize("cls", [GatewaySettings, WorkerSettings])
def test_the_rendered_variable_is_the_binaries_setting(cls):
    assert "CUVIS_CLUSTER_TOKEN_FILE" in cls.env_names()


def test_schema_refuses_a_key_that_is_not_a_file_name(helm):
    proc = run([helm, "template", "x", str(CHART), "--set", "clusterAuth.key=../token"])
    assert proc.returncode != 0 and "clusterAuth" in proc.stderr
