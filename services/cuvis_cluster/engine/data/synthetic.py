"""A synthetic imitation of Cubert XMR frames of a lentil conveyor (the default data of the shipped configs).

Each frame is a uint16 reflectance-count cube ``[H, W, 61]`` (430-910 nm, 8 nm steps; 10000 counts =
100 % reflectance, specular highlights go above) with a class-id mask ``[H, W]`` int32:

=====  ===============  ==============================================================================
 id     class            spectrum
=====  ===============  ==============================================================================
 0      background       conveyor belt: flat grey (~31-33 %) in the visible, gentle rise to ~40 % NIR
 1      lentil_black     dark (~5-8 % in the visible) with a red-edge rise to ~25 % above 700 nm
 2      lentil_brown     anomaly: steep visible rise to ~32 % at 620 nm, early NIR step, slight decline
 3      stone            anomaly: matte grey (~15-29 %), absorption bands near 480 and 890 nm
=====  ===============  ==============================================================================

Background (0) and black lentils (1) are the normal classes, so pipelines use
``normal_class_ids=[0, 1]`` as upstream does for the real Lentils data. Anomalies are sparse by default
(``anomaly_rate=0.02`` of the objects, about 1 % of the pixels; ``min_anomalies=1`` per frame). Denser
anomalies make a global RX fitted on these frames weaker: the anomalies inflate the covariance along their
own spectra, which caps their scores near 1/(anomalous pixel fraction).

Frames are a pure function of ``(seed, frame_id)`` and the params: the same inputs give the same bytes.
Generation is vectorised: a loop runs over the few dozen objects of a frame, each touching only its
bounding box; pixels are never visited one by one.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from cuvis_cluster.errors import InvalidArgument

from .base import DataModule, Frame, register_data_module

WAVELENGTHS_NM = np.arange(430, 911, 8, dtype=np.int32)  # 61 bands
COUNTS_PER_UNIT_REFLECTANCE = 10000.0

BACKGROUND, LENTIL_BLACK, LENTIL_BROWN, STONE = 0, 1, 2, 3
CLASS_NAMES = {
    BACKGROUND: "background",
    LENTIL_BLACK: "lentil_black",
    LENTIL_BROWN: "lentil_brown",
    STONE: "stone",
}
NORMAL_CLASS_IDS = (BACKGROUND, LENTIL_BLACK)
ANOMALY_CLASS_IDS = (LENTIL_BROWN, STONE)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def class_reflectance(wavelengths: np.ndarray = WAVELENGTHS_NM) -> dict[int, np.ndarray]:
    """Mean reflectance (0..1) of each class at the given wavelengths."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    t = (wl - 430.0) / 480.0
    belt = 0.31 + 0.03 * t + 0.06 * _sigmoid((wl - 790.0) / 45.0)
    black = 0.05 + 0.03 * t + 0.17 * _sigmoid((wl - 720.0) / 25.0)
    brown = (
        0.10
        + 0.22 * _sigmoid((wl - 560.0) / 35.0)
        + 0.08 * _sigmoid((wl - 690.0) / 25.0)
        - 0.03 * _sigmoid((wl - 840.0) / 40.0)
    )
    stone = (
        0.19
        + 0.10 * t
        - 0.05 * np.exp(-(((wl - 480.0) / 50.0) ** 2))
        - 0.06 * np.exp(-(((wl - 890.0) / 45.0) ** 2))
    )
    return {BACKGROUND: belt, LENTIL_BLACK: black, LENTIL_BROWN: brown, STONE: stone}


def generate_frame(
    frame_id: int,
    *,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    anomaly_rate: float = 0.02,
    stone_fraction: float = 0.4,
    coverage: float = 0.35,
    lentil_size: float | None = None,
    min_anomalies: int = 1,
    noise: float = 1.0,
    specular: float = 1.0,
) -> Frame:
    """One synthetic frame: ``cube [H,W,61]`` uint16, ``wavelengths [61]`` int32, ``mask [H,W]`` int32."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(frame_id)]))
    wl = WAVELENGTHS_NM
    refl = class_reflectance(wl)
    h, w = int(height), int(width)

    # Object layout: lentils (ellipses) and stones (lumpy blobs), later objects lie on top.
    semi_major = float(lentil_size) if lentil_size else max(2.5, 0.045 * min(h, w))
    mean_area = math.pi * semi_major * semi_major * 0.8
    n_objects = max(1, round(coverage * h * w / mean_area))
    is_anomaly = rng.random(n_objects) < anomaly_rate
    if is_anomaly.sum() < min_anomalies:
        is_anomaly[: min(min_anomalies, n_objects)] = True
    classes = np.where(
        is_anomaly, np.where(rng.random(n_objects) < stone_fraction, STONE, LENTIL_BROWN), LENTIL_BLACK
    )
    rng.shuffle(classes)

    obj_index = np.zeros((h, w), dtype=np.int32)  # 0 = belt, k = object k
    shading = np.ones((h, w), dtype=np.float32)
    highlight = np.zeros((h, w), dtype=np.float32)
    spectra = np.empty((n_objects + 1, wl.shape[0]), dtype=np.float32)
    spectra[0] = refl[BACKGROUND]
    t = (wl - 430.0) / 480.0
    for k in range(n_objects):
        cls = int(classes[k])
        size = semi_major * (1.2 if cls == STONE else 1.0) * rng.uniform(0.85, 1.15)
        a, b = size, size * rng.uniform(0.65, 0.85)
        theta = rng.uniform(0.0, math.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = math.ceil(a) + 1
        y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
        u = (dx * math.cos(theta) + dy * math.sin(theta)) / a
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
        rho2 = u * u + v * v
        if cls == STONE:  # lumpy outline
            phi = np.arctan2(v, u)
            lump = (
                1.0
                + 0.12 * np.sin(3.0 * phi + rng.uniform(0, 2 * math.pi))
                + 0.06 * np.sin(5.0 * phi + rng.uniform(0, 2 * math.pi))
            )
            rho2 = rho2 / (lump * lump)
        inside = rho2 <= 1.0
        if not inside.any():
            continue
        region = (slice(y0, y1), slice(x0, x1))
        obj_index[region][inside] = k + 1
        # Convex body: darker towards the rim.
        shade = (1.0 - 0.35 * rho2).astype(np.float32)
        shading[region][inside] = shade[inside]
        if cls in (LENTIL_BLACK, LENTIL_BROWN):  # glossy seed coat: a small highlight towards the light
            hx, hy = -0.35, -0.35
            spot = np.exp(-((u - hx) ** 2 + (v - hy) ** 2) / (2 * 0.18**2)) * rng.uniform(0.4, 1.2) * specular
            highlight[region][inside] = spot[inside].astype(np.float32)
        else:
            highlight[region][inside] = 0.0
        gain = rng.uniform(0.88, 1.12)
        tilt = 1.0 + rng.uniform(-0.04, 0.04) * (t - 0.5)
        spectra[k + 1] = refl[cls] * gain * tilt

    class_of_object = np.concatenate([[BACKGROUND], classes]).astype(np.int32)
    mask = class_of_object[obj_index]

    # Conveyor illumination: smooth vignetting plus faint belt stripes along the running direction.
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    offset = rng.uniform(-0.1, 0.1, size=2)
    illum = 1.0 - 0.25 * ((ys[:, None] - offset[0]) ** 2 + (xs[None, :] - offset[1]) ** 2)
    stripes = 1.0 + 0.01 * np.sin(
        2 * math.pi * (xs * w / rng.uniform(9.0, 15.0)) + rng.uniform(0, 2 * math.pi)
    )
    field = (illum * stripes[None, :]).astype(np.float32)
    field = np.where(obj_index == 0, field, field * shading)

    signal = spectra[obj_index] * field[..., None] + highlight[..., None] * np.float32(1.1)
    counts = signal * np.float32(COUNTS_PER_UNIT_REFLECTANCE)
    if noise > 0:
        sigma = np.sqrt(np.float32(0.6) * counts + np.float32(12.0) ** 2) * np.float32(noise)
        counts = counts + sigma * rng.standard_normal(counts.shape, dtype=np.float32)
    cube = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return {"cube": cube, "wavelengths": wl.copy(), "mask": mask}


@register_data_module
class LentilsSyntheticDataModule(DataModule):
    """Deterministic synthetic Lentils-like frames (see the module docstring for classes and spectra)."""

    NAME = "lentils_synthetic"
    DESCRIPTION = "Synthetic Cubert XMR lentil conveyor: 61 bands 430-910 nm, uint16 counts, class masks."
    PARAMS: ClassVar[dict[str, Any]] = {
        "height": 128,
        "width": 128,
        "num_frames": 16,
        "seed": 0,
        "anomaly_rate": 0.02,
        "stone_fraction": 0.4,
        "coverage": 0.35,
        "lentil_size": None,
        "min_anomalies": 1,
        "noise": 1.0,
        "specular": 1.0,
        "shuffle": False,
    }
    CLASS_NAMES = CLASS_NAMES

    def _open(self) -> int:
        p = self.params
        checks = {
            "height": (p["height"], 4, 8192),
            "width": (p["width"], 4, 8192),
            "num_frames": (p["num_frames"], 1, 1_000_000),
            "min_anomalies": (p["min_anomalies"], 0, 10_000),
        }
        for key, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InvalidArgument(
                    f"data.params.{key}: expected an integer in [{lo}, {hi}], got {value!r}",
                    field=f"data.params.{key}",
                )
        if isinstance(p["seed"], bool) or not isinstance(p["seed"], int) or p["seed"] < 0:
            raise InvalidArgument(
                f"data.params.seed: expected a non-negative integer, got {p['seed']!r}",
                field="data.params.seed",
            )
        for key in ("anomaly_rate", "stone_fraction", "coverage"):
            value = p[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(
                    f"data.params.{key}: expected a number in [0, 1], got {value!r}",
                    field=f"data.params.{key}",
                )
        for key in ("noise", "specular"):
            value = p[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidArgument(
                    f"data.params.{key}: expected a number >= 0, got {value!r}", field=f"data.params.{key}"
                )
        size = p["lentil_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int | float) or size < 1):
            raise InvalidArgument(
                f"data.params.lentil_size: expected a number >= 1 (pixels), got {size!r}",
                field="data.params.lentil_size",
            )
        return int(p["num_frames"])

    def frame(self, frame_id: int) -> Frame:
        p = self.params
        return generate_frame(
            frame_id,
            height=p["height"],
            width=p["width"],
            seed=p["seed"],
            anomaly_rate=float(p["anomaly_rate"]),
            stone_fraction=float(p["stone_fraction"]),
            coverage=float(p["coverage"]),
            lentil_size=p["lentil_size"],
            min_anomalies=p["min_anomalies"],
            noise=float(p["noise"]),
            specular=float(p["specular"]),
        )
