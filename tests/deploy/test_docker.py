"""Static checks of the container images (there is no Docker engine here): multi-stage, pinned bases,
non-root, OCI labels, a gRPC health check, entry points that exist, a tight build context, pinned deps."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cuvis_cluster.common.settings import GatewaySettings, WorkerSettings
from cuvis_cluster.deploy.tools import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
IMAGES = {"gateway": GatewaySettings, "worker": WorkerSettings}
OCI_LABELS = {"title", "description", "version", "revision", "licenses"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buffer = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        line, buffer = buffer + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """(global ARG defaults, instructions of each stage starting at its FROM)."""
    args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            result.append([])
        if not result:
            if keyword == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                args[name] = default
            continue
        result[-1].append((keyword, rest))
    return args, result


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


@pytest.fixture(params=sorted(IMAGES))
def image(request):
    return request.param


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def test_multi_stage_with_pinned_bases(image):
    args, all_stages = stages(dockerfile(image))
    assert len(all_stages) >= 2, "multi-stage build"
    for stage in all_stages:
        base = expand(stage[0][1].split()[0], args)
        if "@sha256:" in base:
            continue
        _, sep, tag = base.rpartition(":")
        assert sep and "/" not in tag, f"{base}: no tag"
        assert tag != "latest" and re.match(r"^\d+\.\d+\.\d+", tag), f"{base}: not an exact version"
    final = all_stages[-1]
    build_names = {s[0][1].split()[-1] for s in all_stages[:-1]}
    assert any(
        k == "COPY"
        and re.search(r"--from=(\S+)", r)
        and re.search(r"--from=(\S+)", r).group(1) in build_names
        for k, r in final
    ), "the runtime stage copies from the build stage"


def test_runtime_stage_is_non_root(image):
    _, all_stages = stages(dockerfile(image))
    users = [rest for keyword, rest in all_stages[-1] if keyword == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit() and int(user) >= 1000, "a numeric uid lets Kubernetes check runAsNonRoot"
    values = yaml.safe_load((REPO_ROOT / "charts/cuvis-ai/values.yaml").read_text())
    assert int(user) == values["securityContext"]["runAsUser"], "image user = the chart's runAsUser"


def test_oci_labels(image):
    _, all_stages = stages(dockerfile(image))
    labels = " ".join(rest for keyword, rest in all_stages[-1] if keyword == "LABEL")
    found = set(re.findall(r"org\.opencontainers\.image\.(\w+)=", labels))
    assert found >= OCI_LABELS


def test_entrypoint_is_the_console_script(image):
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    _, all_stages = stages(dockerfile(image))
    (entry,) = [rest for keyword, rest in all_stages[-1] if keyword == "ENTRYPOINT"]
    command = json.loads(entry)
    assert command == [f"cuvis-{image}"], "exec form, the console script itself (signals reach it)"
    module, _, function = scripts[command[0]].partition(":")
    path = REPO_ROOT / "services" / Path(*module.split(".")).with_suffix(".py")
    assert path.exists(), f"{scripts[command[0]]}: {path} does not exist yet"
    assert re.search(rf"^def {function}\(", path.read_text(), re.M), f"{path} has no {function}()"


def test_healthcheck_calls_grpc_health(image):
    _, all_stages = stages(dockerfile(image))
    (check,) = [rest for keyword, rest in all_stages[-1] if keyword == "HEALTHCHECK"]
    command = json.loads(check.partition("CMD")[2].strip())
    assert command[:3] == ["python", "-m", "cuvis_cluster.deploy.healthcheck"]
    source = (REPO_ROOT / "services/cuvis_cluster/deploy/healthcheck.py").read_text()
    assert "grpc_health.v1" in source and "HealthStub" in source


def test_image_env_and_ports_match_the_settings_and_chart(image):
    _, all_stages = stages(dockerfile(image))
    final = all_stages[-1]
    env = env_of(final)
    cuvis = {k for k in env if k.startswith("CUVIS_")}
    assert cuvis <= IMAGES[image].env_names(), (
        f"ENV the binary does not read: {cuvis - IMAGES[image].env_names()}"
    )
    listen_port = int(env["CUVIS_LISTEN"].rpartition(":")[2])
    metrics_port = int(env["CUVIS_METRICS_PORT"])
    exposed = {int(p) for keyword, rest in final if keyword == "EXPOSE" for p in rest.split()}
    assert exposed == {listen_port, metrics_port}
    values = yaml.safe_load((REPO_ROOT / "charts/cuvis-ai/values.yaml").read_text())[image]
    assert (values["port"], values["metricsPort"]) == (listen_port, metrics_port)
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_gateway_image_has_no_torch():
    args, all_stages = stages(dockerfile("gateway"))
    text = " ".join(expand(rest, args) for stage in all_stages for _, rest in stage).lower()
    assert "torch" not in text and "cuda" not in text and "[worker]" not in text
    assert "torch" not in (DOCKER / "constraints-gateway.txt").read_text()


def test_worker_image_uses_the_cuda_torch_base():
    args, _ = stages(dockerfile("worker"))
    assert re.match(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime$", args["TORCH_IMAGE"])
    text = dockerfile("worker").read_text()
    assert "--system-site-packages" in text, "the venv reuses the base image's CUDA torch"
    assert '".[worker,upstream]"' in text, "the image carries upstream cuvis-ai for hosted nodes and plugins"


# ---------------------------------------------------------------------------------------- build context


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: * and ? within one path element, ** across elements."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def _patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_build_context_holds_what_the_images_copy(image):
    patterns = _patterns()
    _, all_stages = stages(dockerfile(image))
    for stage in all_stages:
        for keyword, rest in stage:
            if keyword not in {"COPY", "ADD"} or "--from=" in rest:
                continue
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for source in sources:
                path = REPO_ROOT / source
                assert path.exists(), f"{image}: COPY {source}: missing in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    rel = file.relative_to(REPO_ROOT).as_posix()
                    if "__pycache__" in rel or rel.endswith(".pyc") or ".egg-info" in rel:
                        continue
                    assert not _dockerignore_excludes(rel, patterns), f"{rel} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        ".cache/tools/bin/helm",
        "tests/deploy/conftest.py",
        "services/cuvis_cluster/__pycache__/x.pyc",
        "k8s/README.md",
        "data/cube.npy",
    ],
)
def test_build_context_leaves_out_the_rest(path):
    assert _dockerignore_excludes(path, _patterns())


# ---------------------------------------------------------------------------------------- pinned dependencies


def _pins(image: str) -> dict[str, str]:
    pins = {}
    for line in (DOCKER / f"constraints-{image}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"{line}: not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_within_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        "gateway": project["dependencies"],
        "worker": project["dependencies"]
        + project["optional-dependencies"]["worker"]
        + project["optional-dependencies"]["upstream"],
    }
    for image, requirements in wanted.items():
        pins = _pins(image)
        assert not any(
            re.match(r"^(torch|torchvision|triton|pytorch-triton)$|^nvidia-|^cuda-", name) for name in pins
        ), f"{image}: torch, torchvision and the CUDA wheels come from the base image"
        for text in requirements:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if name in ("torch", "torchvision"):
                continue
            assert name in pins, (
                f"{image}: {req.name} is not pinned (python -m cuvis_cluster.deploy.constraints)"
            )
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{image}: {name}=={pins[name]} vs {req}"
            )
    assert set(_pins("gateway")) <= set(_pins("worker"))
