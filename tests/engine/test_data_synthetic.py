"""The synthetic Lentils generator and the data-module interface around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cuvis_cluster.engine.data import DATA_MODULES, build_datamodule
from cuvis_cluster.engine.data.base import default_split
from cuvis_cluster.engine.data.synthetic import (
    ANOMALY_CLASS_IDS,
    CLASS_NAMES,
    WAVELENGTHS_NM,
    class_reflectance,
    generate_frame,
)
from cuvis_cluster.errors import InvalidArgument


def small(**params):
    return {"height": 40, "width": 48, "num_frames": 6, **params}


def test_frames_are_deterministic_by_seed_and_frame_id() -> None:
    a = generate_frame(3, height=32, width=40, seed=7)
    b = generate_frame(3, height=32, width=40, seed=7)
    assert a["cube"].tobytes() == b["cube"].tobytes() and a["mask"].tobytes() == b["mask"].tobytes()
    other_seed = generate_frame(3, height=32, width=40, seed=8)
    other_frame = generate_frame(4, height=32, width=40, seed=7)
    assert a["cube"].tobytes() != other_seed["cube"].tobytes()
    assert a["cube"].tobytes() != other_frame["cube"].tobytes()


def test_frame_layout_dtype_bands_and_classes() -> None:
    frame = generate_frame(0, height=64, width=80, seed=1)
    cube, mask, wl = frame["cube"], frame["mask"], frame["wavelengths"]
    assert cube.shape == (64, 80, 61) and cube.dtype == np.uint16
    assert wl.dtype == np.int32 and wl[0] == 430 and wl[-1] == 910 and np.all(np.diff(wl) == 8)
    assert mask.shape == (64, 80) and mask.dtype == np.int32
    present = set(np.unique(mask).tolist())
    assert {0, 1} <= present and present & set(ANOMALY_CLASS_IDS)  # min_anomalies=1
    assert present <= set(CLASS_NAMES)
    # Reflectance counts: belt around 3000-3800, nothing negative, highlights well above the belt.
    belt = cube[mask == 0].astype(np.float64)
    assert 2500 < np.median(belt) < 4200
    assert cube.max() > 6000


def test_class_spectra_look_like_the_lentils_recipe() -> None:
    refl = class_reflectance()
    black, brown, belt = refl[1], refl[2], refl[0]
    nir = WAVELENGTHS_NM >= 750
    vis = WAVELENGTHS_NM <= 600
    assert black[vis].mean() < 0.1 and black[nir].mean() > 2 * black[vis].mean()  # dark with a red-edge rise
    assert brown[(WAVELENGTHS_NM >= 600) & (WAVELENGTHS_NM <= 650)].mean() > 2 * brown[:3].mean()
    assert np.ptp(belt[vis]) < 0.03 and belt[nir].mean() > belt[vis].mean()  # flat visible, NIR rise
    # The classes are spectrally distinct in the pixels too.
    frame = generate_frame(1, height=96, width=96, seed=2, noise=0.0, specular=0.0)
    means = {
        c: frame["cube"][frame["mask"] == c].astype(np.float64).mean(0) for c in np.unique(frame["mask"])
    }
    for c in means:
        for d in means:
            if c < d:
                shape_c, shape_d = means[c] / means[c].mean(), means[d] / means[d].mean()
                assert np.abs(shape_c - shape_d).max() > 0.1, (c, d)


def test_any_frame_size_and_object_sizes_scale() -> None:
    tiny = generate_frame(0, height=8, width=12)
    assert tiny["cube"].shape == (8, 12, 61)
    wide = generate_frame(0, height=30, width=200, lentil_size=4)
    assert wide["cube"].shape == (30, 200, 61) and (wide["mask"] == 1).sum() > 100


def test_datamodule_batches_have_the_documented_keys() -> None:
    dm = build_datamodule(
        {
            "data_module": "lentils_synthetic",
            "batch_size": 2,
            "train_ids": [0, 1, 2],
            "val_ids": "3",
            "test_ids": [4, 5],
            "params": small(seed=5),
        },
    )
    batches = list(dm.train_dataloader())
    assert [b["cube"].shape[0] for b in batches] == [2, 1]
    batch = batches[0]
    assert set(batch) == {"cube", "wavelengths", "mask", "frame_id"}
    assert batch["cube"].dtype == torch.uint16 and batch["cube"].shape == (2, 40, 48, 61)
    assert batch["wavelengths"].shape == (2, 61) and batch["wavelengths"].dtype == torch.int32
    assert batch["mask"].shape == (2, 40, 48) and batch["mask"].dtype == torch.int32
    assert batch["frame_id"].tolist() == [0, 1]
    expected = generate_frame(1, height=40, width=48, seed=5)["cube"]
    assert np.array_equal(batch["cube"][1].numpy(), expected)
    assert [b["frame_id"].tolist() for b in dm.val_dataloader()] == [[3]]
    assert dm.ids("test") == [4, 5]
    info = dm.describe()
    assert info["channels"] == 61 and info["num_frames"] == 6 and info["class_names"][3] == "stone"


def test_pydantic_like_configs_and_default_split() -> None:
    class Model:
        def model_dump(self):
            return {
                "data_module": "lentils_synthetic",
                "batch_size": 4,
                "num_workers": 0,
                "train_ids": None,
                "val_ids": None,
                "test_ids": [],
                "params": small(num_frames=10),
            }

    dm = build_datamodule(Model())
    assert dm.ids("train") == list(range(6)) and dm.ids("val") == [6, 7] and dm.ids("test") == []
    assert list(dm.test_dataloader()) == []
    assert default_split(16) == {"train": list(range(10)), "val": [10, 11, 12], "test": [13, 14, 15]}
    assert default_split(2) == {"train": [0, 1], "val": [], "test": []}
    assert build_datamodule({}).NAME == "lentils_synthetic"  # the default data module


def test_worker_processes_yield_the_same_batches() -> None:
    cfg = {"batch_size": 2, "train_ids": [0, 1, 2, 3], "params": small(height=16, width=16)}
    serial = list(build_datamodule(cfg).train_dataloader())
    parallel = list(build_datamodule({**cfg, "num_workers": 2}).train_dataloader())
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["cube"], b["cube"]) and torch.equal(a["mask"], b["mask"])


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"data_module": "nope"}, "data.data_module"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"train_ids": [0, 99]}, "data.train_ids"),
        ({"val_ids": "2-1"}, "data.val_ids"),
        ({"test_ids": [-1]}, "data.test_ids"),
        ({"params": {"heigth": 3}}, "data.params.heigth"),
        ({"params": {"height": 2}}, "data.params.height"),
        ({"params": {"anomaly_rate": 2}}, "data.params.anomaly_rate"),
        ({"params": {"seed": -4}}, "data.params.seed"),
        ({"params": "x"}, "data.params"),
    ],
)
def test_bad_configs_name_the_field(config: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        build_datamodule({"params": small(), **config} if "params" not in config else config)
    assert info.value.field == field, str(info.value)


def test_registry_lists_the_four_sources() -> None:
    assert {"lentils_synthetic", "npz", "cu3s", "indian_pines"} <= set(DATA_MODULES)
