"""The file-based sources (NPZ folders, .cu3s, Indian Pines), COCO rasterisation and id parsing."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cuvis_cluster.engine.data import DataRoots, build_datamodule, format_ids, parse_ids
from cuvis_cluster.engine.data.cu3s import (
    INSTALL_HINT,
    coco_class_mask,
    decode_rle_string,
    polygon_mask,
    rle_mask,
)
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

HAS_TENSORLY = importlib.util.find_spec("tensorly") is not None


# -- id parsing -------------------------------------------------------------------------------------
@given(st.lists(st.integers(min_value=0, max_value=500), max_size=40))
def test_format_then_parse_round_trips(ids: list[int]) -> None:
    unique = sorted(set(ids))
    assert parse_ids(format_ids(unique)) == unique
    assert parse_ids(ids) == list(dict.fromkeys(ids))
    assert parse_ids([str(i) for i in ids]) == list(dict.fromkeys(ids))


@given(st.text(max_size=20))
def test_parse_ids_never_fails_unexpectedly(text: str) -> None:
    try:
        ids = parse_ids(text, "data.train_ids")
    except InvalidArgument as exc:
        assert exc.field == "data.train_ids"
    else:
        assert all(isinstance(i, int) and i >= 0 for i in ids)


def test_parse_ids_examples() -> None:
    assert parse_ids("0-3, 7") == [0, 1, 2, 3, 7]
    assert parse_ids(5) == [5] and parse_ids(None) == [] and parse_ids([2, "4-5", 2]) == [2, 4, 5]
    for bad in ("3-1", "a", [True], [1.5], {"x": 1}, "-2"):
        with pytest.raises(InvalidArgument):
            parse_ids(bad, "ids")


# -- npz folders ------------------------------------------------------------------------------------
def _write_npz_folder(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir()
    cubes = {name: rng.integers(0, 9000, size=(6, 5, 4)).astype(np.uint16) for name in ("a", "b", "c")}
    masks = {name: rng.integers(0, 4, size=(6, 5)).astype(np.int32) for name in cubes}
    wl = np.array([500, 600, 700, 800])
    np.savez(folder / "a.npz", cube=cubes["a"], wavelengths=wl, mask=masks["a"])
    np.save(folder / "b.npy", cubes["b"])
    np.save(folder / "b_mask.npy", masks["b"])
    np.savez(folder / "c.npz", cube=cubes["c"], mask=masks["c"])
    np.save(folder / "wavelengths.npy", wl)
    (folder / "notes.txt").write_text("ignored")
    return {"a": cubes["a"], "b": cubes["b"], "c": cubes["c"], "mask_b": masks["b"]}


def test_npz_folder_frames_in_name_order(tmp_path: Path) -> None:
    arrays = _write_npz_folder(tmp_path / "frames")
    dm = build_datamodule(
        {
            "data_module": "npz",
            "batch_size": 2,
            "train_ids": [0, 1],
            "test_ids": [2],
            "params": {"path": "frames"},
        },
        DataRoots([tmp_path]),
    )
    assert dm.num_frames == 3
    (batch,) = list(dm.train_dataloader())
    assert batch["cube"].dtype == torch.uint16 and batch["cube"].shape == (2, 6, 5, 4)
    assert np.array_equal(batch["cube"][1].numpy(), arrays["b"])
    assert np.array_equal(batch["mask"][1].numpy(), arrays["mask_b"])
    assert batch["wavelengths"].tolist() == [[500, 600, 700, 800]] * 2
    (test,) = list(dm.test_dataloader())
    assert np.array_equal(test["cube"][0].numpy(), arrays["c"])


def test_npz_errors(tmp_path: Path) -> None:
    roots = DataRoots([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound):
        build_datamodule({"data_module": "npz", "params": {"path": "empty"}}, roots)
    with pytest.raises(NotFound):
        build_datamodule({"data_module": "npz", "params": {"path": "missing"}}, roots)
    with pytest.raises(PermissionDenied):
        build_datamodule({"data_module": "npz", "params": {"path": "../.."}}, roots)
    with pytest.raises(InvalidArgument, match="path"):
        build_datamodule({"data_module": "npz"}, roots)
    (tmp_path / "nowl").mkdir()
    np.save(tmp_path / "nowl" / "x.npy", np.zeros((2, 2, 3), np.float32))
    dm = build_datamodule({"data_module": "npz", "train_ids": [0], "params": {"path": "nowl"}}, roots)
    with pytest.raises(InvalidArgument, match="wavelengths"):
        list(dm.train_dataloader())
    dm = build_datamodule(
        {"data_module": "npz", "train_ids": [0], "params": {"path": "nowl", "wavelengths": [1.5, 2.5, 3.5]}},
        roots,
    )
    (batch,) = list(dm.train_dataloader())
    assert batch["wavelengths"].dtype == torch.float32 and "mask" not in batch


# -- cu3s -------------------------------------------------------------------------------------------
def test_cu3s_without_the_sdk_is_failed_precondition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s.cu3s").write_bytes(b"not really a session")
    monkeypatch.setitem(sys.modules, "cuvis", None)  # import cuvis -> ImportError, as without libcuvis
    with pytest.raises(FailedPrecondition) as info:
        build_datamodule(
            {"data_module": "cu3s", "params": {"cu3s_file_path": "s.cu3s"}}, DataRoots([tmp_path])
        )
    assert INSTALL_HINT in str(info.value) and "pip install cuvis" in str(info.value)


def test_cu3s_reads_measurements_and_coco_labels_through_the_sdk_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the proprietary SDK with the documented surface (SessionFile, ProcessingContext, ...).
    rng = np.random.default_rng(1)
    cubes = [rng.integers(0, 5000, size=(8, 6, 3)).astype(np.uint16) for _ in range(3)]
    applied: list[str] = []

    class Measurement:
        def __init__(self, i):
            self.cube = types.SimpleNamespace(array=cubes[i], wavelength=[450, 550, 650])

    class SessionFile:
        def __init__(self, path):
            assert path.endswith("s.cu3s")

        def __len__(self):
            return 3

        def get_measurement(self, i):
            return Measurement(i)

    class ProcessingContext:
        def __init__(self, session):
            self.processing_mode = None

        def apply(self, mesu):
            applied.append(self.processing_mode)

    fake = types.SimpleNamespace(
        SessionFile=SessionFile,
        ProcessingContext=ProcessingContext,
        ProcessingMode=types.SimpleNamespace(Reflectance="Reflectance", Raw="Raw"),
    )
    monkeypatch.setitem(sys.modules, "cuvis", fake)
    (tmp_path / "s.cu3s").write_bytes(b"")
    coco = {
        "annotations": [
            {"image_id": 1, "category_id": 3, "segmentation": [[1, 1, 4, 1, 4, 5, 1, 5]]},
            {"image_id": 1, "category_id": 2, "segmentation": {"size": [8, 6], "counts": [2, 3, 43]}},
        ]
    }
    import json

    (tmp_path / "s.json").write_text(json.dumps(coco))
    dm = build_datamodule(
        {
            "data_module": "cu3s",
            "batch_size": 2,
            "train_ids": [0, 1],
            "cu3s_file_path": "s.cu3s",  # upstream's top-level spelling
            "params": {"annotation_json_path": "s.json"},
        },
        DataRoots([tmp_path]),
    )
    (batch,) = list(dm.train_dataloader())
    assert np.array_equal(batch["cube"][1].numpy(), cubes[1]) and set(applied) == {"Reflectance"}
    mask = batch["mask"][1].numpy()
    assert mask[1:5, 1:4].tolist() == [[3] * 3] * 4 and mask[2, 0] == 2
    assert not batch["mask"][0].numpy().any()
    with pytest.raises(InvalidArgument, match="processing_mode"):
        build_datamodule(
            {"data_module": "cu3s", "params": {"cu3s_file_path": "s.cu3s", "processing_mode": "Nope"}},
            DataRoots([tmp_path]),
        )


def test_polygon_and_rle_rasterisation() -> None:
    square = polygon_mask([1, 1, 4, 1, 4, 3, 1, 3], 5, 6)
    assert np.argwhere(square).tolist() == [[r, c] for r in (1, 2) for c in (1, 2, 3)]
    triangle = polygon_mask([0, 0, 10, 0, 0, 10], 10, 10)
    yy, xx = np.mgrid[0:10, 0:10] + 0.5
    assert np.array_equal(triangle, xx + yy < 10)
    # Uncompressed RLE is column-major: 2 off, 3 on, rest off in a 3x4 image.
    rle = rle_mask({"size": [3, 4], "counts": [2, 3, 7]}, 3, 4)
    expected = np.zeros(12, bool)
    expected[2:5] = True
    assert np.array_equal(rle, expected.reshape(4, 3).T)
    with pytest.raises(ValueError):
        rle_mask({"size": [3, 4], "counts": [2, 3]}, 3, 4)


def _encode_rle(runs: list[int]) -> str:
    # COCO's compressed string encoding, written from its definition, to test the decoder.
    out = []
    for i, value in enumerate(runs):
        x = value - runs[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=30))
def test_compressed_rle_decoder_inverts_the_encoding(runs: list[int]) -> None:
    assert decode_rle_string(_encode_rle(runs)) == runs


def test_coco_mask_later_annotations_paint_over() -> None:
    anns = [
        {"category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
        {"category_id": 2, "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]]},
        {"category_id": 9, "segmentation": None},
    ]
    mask = coco_class_mask(anns, 4, 4)
    assert mask.dtype == np.int32 and mask[0, 0] == 1 and mask[3, 3] == 2 and (mask == 2).sum() == 4


# -- Indian Pines -----------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TENSORLY, reason="tensorly is not installed")
def test_indian_pines_tiles_the_scene_and_resamples_to_61_bands() -> None:
    dm = build_datamodule(
        {"data_module": "indian_pines", "batch_size": 4, "train_ids": "0-3", "params": {"patch_size": 36}}
    )
    assert dm.num_frames == 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["cube"].shape == (4, 36, 36, 61) and batch["cube"].dtype == torch.float32
    assert batch["wavelengths"][0].tolist() == list(range(430, 911, 8))
    assert batch["mask"].dtype == torch.int32 and int(batch["mask"].max()) <= 16
    assert float(batch["cube"].min()) > 900 and float(batch["cube"].max()) < 10000

    from tensorly.datasets import load_indian_pines

    scene = load_indian_pines()
    native = build_datamodule(
        {"data_module": "indian_pines", "train_ids": [5], "params": {"bands": "native", "patch_size": 36}}
    )
    frame = native.frame(5)  # row 1, column 1
    assert np.array_equal(frame["cube"], scene.tensor[36:72, 36:72].astype(np.float32))
    assert np.array_equal(frame["mask"], scene.ticks[0][36:72, 36:72])
    assert frame["wavelengths"].shape == (200,)
    recoded = build_datamodule({"data_module": "indian_pines", "params": {"anomaly_class_ids": [2, 11]}})
    labels = scene.ticks[0][:36, :36]
    assert np.array_equal(recoded.frame(0)["mask"], np.where(np.isin(labels, [2, 11]), 2, 0))
