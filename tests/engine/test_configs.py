"""ResolveConfig at engine level: Hydra composition, overrides, name-addressed node overrides, errors."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from cuvis_cluster.engine import configs, schemas
from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.errors import InvalidArgument, NotFound, PermissionDenied

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
OUT = Path(tempfile.mkdtemp(prefix="resolved-"))  # the output root the resolved pipelines go to


def resolve(kind: str, path: str, overrides: list[str] | None = None, search: list[Path] | None = None):
    search = search or [CONFIGS]
    return configs.resolve(kind, path, overrides or [], search, [CONFIGS, *search, OUT], output_dir=OUT)


def _get(data, dotted: str):
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _pipeline(resolved_trainrun: dict) -> dict:
    """The canonical pipeline a resolved trainrun references (written under the output root)."""
    ref = Path(resolved_trainrun["pipeline"])
    assert ref.is_absolute() and ref.is_relative_to(OUT / "resolved")
    return yaml.safe_load(ref.read_text())


# -- the documented override paths --------------------------------------------------------------------
DOCUMENTED = [
    ("training.trainer.max_epochs=50", "training.max_epochs", 50),
    ("training.max_epochs=50", "training.max_epochs", 50),
    ("training.optimizer.lr=0.0005", "training.optimizer.lr", 0.0005),
    ("training.optimizer.weight_decay=0.005", "training.optimizer.weight_decay", 0.005),
    ("training.scheduler.patience=10", "training.scheduler.patience", 10),
    ("training.seed=42", "training.seed", 42),
    ("data.batch_size=16", "data.batch_size", 16),
    ("data.train_ids=[0,1,2]", "data.splits.train.0.ids", [0, 1, 2]),
    ("data.val_ids=[3,4]", "data.splits.val.0.ids", [3, 4]),
]


@pytest.mark.parametrize("trainrun", ["rx_statistical", "channel_selector", "deep_svdd"])
@pytest.mark.parametrize(("override", "path", "value"), DOCUMENTED)
def test_documented_override_paths_work_as_written(trainrun, override, path, value):
    resolved = resolve("trainrun", f"trainrun/{trainrun}", [override])
    assert _get(resolved, path) == value


def test_all_documented_overrides_together():
    resolved = resolve("trainrun", "trainrun/rx_statistical", [o for o, _, _ in DOCUMENTED])
    for _, path, value in DOCUMENTED:
        assert _get(resolved, path) == value
    # untouched values keep their YAML defaults
    assert resolved["training"]["optimizer"]["name"] == "adamw"
    assert resolved["data"]["data_module"] == "lentils_synthetic"


def test_trainrun_composes_data_training_and_inlines_pipeline():
    resolved = resolve("trainrun", "trainrun/deep_svdd")
    assert resolved["name"] == "deep_svdd"
    assert resolved["data"]["data_module"] == "lentils_synthetic"
    assert resolved["data"]["splits"]["test"] == [
        {"kind": "dir_indices", "ids": [9, 10, 11], "paths": [], "stems": [], "any_of": [], "of": []}
    ]
    assert resolved["training"]["max_epochs"] == 20  # trainrun value wins over training/default
    assert resolved["training"]["optimizer"]["name"] == "adam"
    assert resolved["loss_nodes"] == ["deepsvdd_loss"]
    pipeline = _pipeline(resolved)  # referenced by path, as the published TrainRunConfig requires
    assert [n["name"] for n in pipeline["nodes"]][:3] == ["data", "bandpass", "unit_norm"]
    json.dumps(resolved)  # JSON-able


@pytest.mark.parametrize("name", ["rx_statistical", "channel_selector", "deep_svdd"])
def test_shipped_pipelines_resolve_and_build(name):
    resolved = resolve("pipeline", f"pipeline/{name}")
    pipeline = Pipeline.from_config(resolved, NodeRegistry())
    assert pipeline.order[0] == "data"
    # the trainrun references the very same pipeline
    assert _pipeline(resolve("trainrun", name)) == resolved


def test_training_and_data_configs_resolve_with_and_without_type_prefix():
    plain = resolve("training", "training/default", ["optimizer.lr=0.005"])
    prefixed = resolve("training", "default", ["training.optimizer.lr=0.005"])
    assert plain == prefixed
    assert plain["optimizer"]["lr"] == 0.005
    assert "training" not in plain  # Hydra's group package is unwrapped
    data = resolve("data", "data/lentils_synthetic", ["data.batch_size=4", "params.height=32"])
    assert data["batch_size"] == 4 and data["params"]["height"] == 32


def test_flat_and_nested_trainer_keys_both_land_on_the_flat_key():
    resolved = resolve("trainrun", "rx_statistical", ["max_epochs=3", "seed=123", "training.max_epochs=4"])
    assert resolved["training"]["seed"] == 123
    assert resolved["training"]["max_epochs"] == 4  # the later override wins
    resolved = resolve("trainrun", "rx_statistical", ["training.trainer.max_epochs=6"])
    assert resolved["training"]["max_epochs"] == 6 and "trainer" not in resolved["training"]


# -- name-addressed node overrides ----------------------------------------------------------------------
def _node(resolved_pipeline: dict, name: str) -> dict:
    return next(n for n in resolved_pipeline["nodes"] if n["name"] == name)


@pytest.mark.parametrize("spelling", ["params", "hparams"])
def test_name_addressed_node_override_changes_the_param(spelling):
    base = _pipeline(resolve("trainrun", "rx_statistical"))
    assert _node(base, "rx_detector")["hparams"]["eps"] == pytest.approx(1e-6)
    resolved = resolve("trainrun", "rx_statistical", [f"pipeline.nodes.rx_detector.{spelling}.eps=0.001"])
    pipeline = _pipeline(resolved)
    assert _node(pipeline, "rx_detector")["hparams"]["eps"] == pytest.approx(0.001)
    # only that node changed
    others = [n for n in pipeline["nodes"] if n["name"] != "rx_detector"]
    assert others == [n for n in base["nodes"] if n["name"] != "rx_detector"]


def test_name_addressed_override_adds_a_param_the_yaml_does_not_set():
    resolved = resolve(
        "trainrun", "rx_statistical", ["pipeline.nodes.rx_detector.params.cache_inverse=false"]
    )
    assert _node(_pipeline(resolved), "rx_detector")["hparams"]["cache_inverse"] is False


def test_name_addressed_override_on_a_pipeline_config():
    for override in ("pipeline.nodes.decider.params.threshold=0.7", "nodes.decider.params.threshold=0.7"):
        resolved = resolve("pipeline", "rx_statistical", [override])
        assert _node(resolved, "decider")["hparams"]["threshold"] == pytest.approx(0.7)


def test_unknown_node_name_lists_the_nodes():
    with pytest.raises(InvalidArgument) as info:
        resolve("trainrun", "rx_statistical", ["pipeline.nodes.channel_selector.hparams.tau_start=8"])
    assert "channel_selector" in str(info.value)
    assert "rx_detector" in str(info.value) and "normalizer" in str(info.value)


def test_index_addressed_node_override_still_works():
    resolved = resolve("pipeline", "rx_statistical", ["nodes.4.params.threshold=0.9"])
    assert resolved["nodes"][4]["name"] == "decider"
    assert resolved["nodes"][4]["hparams"]["threshold"] == pytest.approx(0.9)


# -- file lookup and path references --------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PIPELINE_YAML = """
metadata: {name: tiny, tags: [t]}
nodes:
  - {name: data, class_name: cuvis.HyperspectralInput, hparams: {normal_class_ids: [0, 1]}}
  - {name: norm, type: MinMaxNormalizer, params: {eps: 1.0e-6}}
connections:
  - {source: data.outputs.cube, target: norm.inputs.data}
"""


def test_trainrun_pipeline_path_reference_is_inlined_with_overrides(tmp_path):
    _write(tmp_path / "pipeline" / "tiny.yaml", PIPELINE_YAML)
    _write(
        tmp_path / "trainrun" / "tiny_run.yaml",
        "name: tiny_run\npipeline: ../pipeline/tiny.yaml\ndata: {batch_size: 1}\n",
    )
    resolved = resolve("trainrun", "trainrun/tiny_run", ["pipeline.nodes.norm.params.eps=0.5"], [tmp_path])
    pipeline = _pipeline(resolved)
    assert _node(pipeline, "norm")["hparams"]["eps"] == 0.5
    # both spellings come out canonical: full class names, hparams, node.outputs.port / node.inputs.port
    assert pipeline["nodes"][0]["class_name"] == "cuvis.HyperspectralInput"
    assert pipeline["nodes"][1]["class_name"] == "cuvis_ai.node.normalization.MinMaxNormalizer"
    assert pipeline["connections"] == [{"source": "data.outputs.cube", "target": "norm.inputs.data"}]


def test_first_matching_search_path_wins(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _write(first / "data" / "mine.yaml", "batch_size: 3\n")
    _write(second / "data" / "mine.yaml", "batch_size: 7\n")
    assert resolve("data", "data/mine", search=[first, second])["batch_size"] == 3
    assert resolve("data", "mine", search=[second, first])["batch_size"] == 7


def test_group_directory_as_search_path_keeps_cross_group_defaults():
    # upstream clients add configs/trainrun etc. as search paths and ask for "rx_statistical"
    resolved = resolve("trainrun", "rx_statistical", search=[CONFIGS / "trainrun", CONFIGS])
    assert resolved["data"]["data_module"] == "lentils_synthetic"


def test_deletion_override_is_applied_once():
    resolved = resolve("trainrun", "channel_selector", ["~training.scheduler"])
    assert resolved["training"].get("scheduler") is None


def test_eight_concurrent_threads_with_different_search_paths(tmp_path):
    roots = []
    for i in range(8):
        root = tmp_path / f"s{i}"
        _write(root / "data" / "mine.yaml", f"batch_size: {i + 1}\nparams: {{seed: {i}}}\n")
        _write(
            root / "trainrun" / "run.yaml",
            f"# @package _global_\ndefaults:\n  - /data@data: mine\n  - _self_\nname: run{i}\n",
        )
        roots.append(root)
    barrier = threading.Barrier(8)

    def work(i: int) -> list[tuple[int, str, int]]:
        barrier.wait()
        out = []
        for round_ in range(5):
            r = configs.resolve(
                "trainrun", "trainrun/run", [f"data.num_workers={round_}"], [roots[i]], [roots[i]]
            )
            out.append((r["data"]["batch_size"], r["name"], r["data"]["num_workers"]))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, rows in enumerate(results):
        assert rows == [(i + 1, f"run{i}", round_) for round_ in range(5)]


# -- errors ---------------------------------------------------------------------------------------------
def test_missing_file_is_not_found():
    with pytest.raises(NotFound):
        resolve("trainrun", "trainrun/does_not_exist")


def test_invalid_result_names_the_field_path():
    with pytest.raises(InvalidArgument) as info:
        resolve("trainrun", "rx_statistical", ["training.optimizer.lr=0"])
    assert "training.optimizer.lr: Input should be greater than 0" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        resolve("trainrun", "rx_statistical", ["training.optimizer.name=rmsprop"])
    assert "training.optimizer.name" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        resolve("trainrun", "rx_statistical", ["training.max_epochs=0"])
    assert "training.trainer.max_epochs" in str(info.value)


@pytest.mark.parametrize(
    "override",
    ["data.batch_size", "data.batch_size=[1", "training.optimizer.lrr=0.1", "nonsense_key=1"],
)
def test_bad_overrides_are_invalid_argument(override):
    with pytest.raises(InvalidArgument):
        resolve("trainrun", "rx_statistical", [override])


def test_yaml_syntax_error_is_invalid_argument(tmp_path):
    _write(tmp_path / "data" / "broken.yaml", "batch_size: [1, 2\nparams: {\n")
    with pytest.raises(InvalidArgument):
        resolve("data", "data/broken", search=[tmp_path])


def test_missing_defaults_entry_is_invalid_argument(tmp_path):
    _write(
        tmp_path / "trainrun" / "r.yaml", "# @package _global_\ndefaults:\n  - /data@data: nope\n  - _self_\n"
    )
    with pytest.raises(InvalidArgument):
        resolve("trainrun", "trainrun/r", search=[tmp_path])


def test_unknown_config_type_is_invalid_argument():
    with pytest.raises(InvalidArgument):
        resolve("plugins", "x")


# -- path confinement -----------------------------------------------------------------------------------
def test_dotdot_is_refused(tmp_path):
    with pytest.raises(InvalidArgument):
        resolve("data", "../data/lentils_synthetic", search=[CONFIGS / "pipeline"])


def test_absolute_path_outside_the_roots_is_refused(tmp_path):
    outside = _write(tmp_path / "elsewhere" / "data.yaml", "batch_size: 2\n")
    with pytest.raises(PermissionDenied):
        configs.resolve("data", str(outside), [], [CONFIGS], [CONFIGS])


def test_absolute_path_inside_the_roots_resolves():
    resolved = configs.resolve(
        "pipeline", str(CONFIGS / "pipeline" / "rx_statistical.yaml"), [], [], [CONFIGS]
    )
    assert resolved["metadata"]["name"] == "rx_statistical"


def test_symlink_out_of_the_roots_is_refused(tmp_path):
    secret = _write(tmp_path / "secret" / "data.yaml", "batch_size: 2\n")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    os.symlink(secret, root / "data" / "leak.yaml")
    with pytest.raises(PermissionDenied):
        configs.resolve("data", "data/leak", [], [root], [root])


# -- schemas --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(schemas.CONFIG_MODELS))
def test_every_config_type_has_a_json_schema(kind):
    schema = schemas.json_schema(kind)
    assert schema["type"] == "object" and schema["properties"]


def test_training_schema_has_optimizer_and_unknown_type_is_not_found():
    assert "optimizer" in schemas.json_schema("training")["properties"]
    with pytest.raises(NotFound):
        schemas.json_schema("nope")
