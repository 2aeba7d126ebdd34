"""Reading inference inputs: numpy arrays, ``.npz`` files and (with Cubert's SDK) ``.cu3s`` session files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cuvis_cluster import errors
from cuvis_cluster.client._errors import local_error
from cuvis_cluster.wire import fastwire
from cuvis_cluster.wire.codec import numpy_to_proto
from cuvis_cluster.wire.pb import pb

# InputBatch fields that are tensors, besides `cube`.
_TENSOR_FIELDS = ("wavelengths", "mask", "rgb_image", "mesu_index", "frame_id")


@dataclass
class Frames:
    """Inputs of one Inference call, as numpy arrays. ``cube`` is BHWC."""

    cube: np.ndarray
    wavelengths: np.ndarray | None = None
    mask: np.ndarray | None = None
    rgb_image: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def to_proto(
        self, *, text_prompt: str = "", extra_inputs: Mapping[str, Any] | None = None
    ) -> pb.InputBatch:
        batch = pb.InputBatch(cube=numpy_to_proto(self.cube, field="inputs.cube"))
        if self.wavelengths is not None:
            batch.wavelengths.CopyFrom(numpy_to_proto(self.wavelengths, field="inputs.wavelengths"))
        if self.mask is not None:
            batch.mask.CopyFrom(numpy_to_proto(self.mask, field="inputs.mask"))
        if self.rgb_image is not None:
            batch.rgb_image.CopyFrom(numpy_to_proto(self.rgb_image, field="inputs.rgb_image"))
        for name, value in {**self.extra, **(extra_inputs or {})}.items():
            target = f"inputs.extra_inputs[{name}]"
            if name in ("mesu_index", "frame_id"):
                getattr(batch, name).CopyFrom(numpy_to_proto(value, field=f"inputs.{name}"))
            else:
                batch.extra_inputs[name].CopyFrom(numpy_to_proto(value, field=target))
        if text_prompt:
            batch.text_prompt = text_prompt
        return batch

    def encode_request(
        self,
        session_id: str,
        output_specs: Iterable[str] = (),
        *,
        text_prompt: str = "",
        extra_inputs: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The serialized ``InferenceRequest`` of these inputs, the same as ``InferenceRequest(session_id,
        inputs=self.to_proto(...), output_specs).SerializeToString(deterministic=True)``, but copying each
        array once instead of three times (see :mod:`cuvis_cluster.wire.fastwire`)."""
        tensors: dict[str, Any] = {"cube": self.cube}
        for name in ("wavelengths", "mask", "rgb_image"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        extra: dict[str, Any] = {}
        for name, value in {**self.extra, **(extra_inputs or {})}.items():
            if name in ("mesu_index", "frame_id"):
                tensors[name] = value
            else:
                extra[name] = value
        return fastwire.encode_inference_request(
            session_id, tensors, output_specs, extra_inputs=extra, text_prompt=text_prompt
        )


def batched(cube: Any) -> np.ndarray:
    """A cube as BHWC: an HWC frame gets a batch axis of 1."""
    array = np.asarray(cube)
    if array.ndim == 3:
        return array[None]
    if array.ndim != 4:
        raise local_error(
            errors.InvalidArgument,
            f"cube must be HWC or BHWC (3 or 4 dimensions), got shape {array.shape}",
            field="cube",
        )
    return array


def _batched_like(value: np.ndarray | None, frames: int, per_frame_ndim: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim == per_frame_ndim and frames == 1:
        return array[None]
    return array


def from_arrays(
    cube: Any,
    wavelengths: Any = None,
    mask: Any = None,
    rgb_image: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Frames:
    cube_b = batched(cube)
    return Frames(
        cube=cube_b,
        wavelengths=None if wavelengths is None else np.asarray(wavelengths),
        mask=_batched_like(mask, cube_b.shape[0], 2),
        rgb_image=_batched_like(rgb_image, cube_b.shape[0], 3),
        extra={k: np.asarray(v) for k, v in (extra or {}).items()},
    )


def read_npz(path: Path) -> Frames:
    """``cube`` (HWC/BHWC), optional ``wavelengths``, ``mask``, ``rgb_image``; other keys -> extra inputs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise local_error(
            errors.InvalidArgument, f"cannot read {path} as .npz: {exc}", field="input"
        ) from exc
    if "cube" not in arrays:
        raise local_error(
            errors.InvalidArgument,
            f"{path} has no 'cube' array (found: {', '.join(sorted(arrays)) or 'nothing'})",
            field="input",
        )
    cube = arrays.pop("cube")
    known = {k: arrays.pop(k, None) for k in ("wavelengths", "mask", "rgb_image")}
    return from_arrays(cube, known["wavelengths"], known["mask"], known["rgb_image"], extra=arrays)


CUVIS_MISSING = (
    "reading .cu3s files needs Cubert's cuvis SDK: `pip install cuvis` plus the native libcuvis from the "
    "Cubert SDK installer (or the cubertgmbh/cuvis_python image), with CUVIS pointing at it. Without it, "
    "convert the file to .npz (cube, wavelengths) or pass numpy arrays to infer()."
)


def read_cu3s(path: Path, *, frame: int = 0, processing_mode: str = "Raw") -> Frames:
    """One measurement of a ``.cu3s`` session file, through the cuvis SDK when it can be imported."""
    try:
        import cuvis  # type: ignore[import-not-found]  # optional vendor SDK, absent from registries
    except Exception as exc:  # ImportError, or the SDK's own error when libcuvis is missing
        raise local_error(errors.FailedPrecondition, f"{CUVIS_MISSING} ({exc})", field="input") from exc
    session = cuvis.SessionFile(str(path))
    context = cuvis.ProcessingContext(session)
    context.processing_mode = getattr(cuvis.ProcessingMode, processing_mode)
    measurement = context.apply(session.get_measurement(frame))
    cube = measurement.data["cube"]
    return from_arrays(np.asarray(cube.array), np.asarray(cube.wavelength).ravel())


def read_file(path: str | Path, *, frame: int = 0, processing_mode: str = "Raw") -> Frames:
    """Inputs from ``.npz`` or ``.cu3s`` (by suffix)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise local_error(errors.NotFound, f"input file {path} does not exist", field="input")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path)
    if suffix == ".cu3s":
        return read_cu3s(path, frame=frame, processing_mode=processing_mode)
    raise local_error(
        errors.InvalidArgument,
        f"{path}: unsupported input format {suffix!r}; use .npz or .cu3s",
        field="input",
    )
