"""Model inputs from files or Python: ``.npz`` archives, image folders, iterables of input dicts.

Every source is checked against the model's inputs (names, element types, ranks and fixed
dimensions) before any work starts, and problems are reported in one line.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx

from .errors import EdgeoptError

LABELS = "labels"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype and shape (``None`` for a symbolic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple

    @property
    def batch_axis(self) -> int:
        """Axis 0, unless it is a fixed size above 1 (e.g. time-major sequences): then the first
        symbolic axis."""
        if self.shape and self.shape[0] not in (None, 1):
            return next((i for i, d in enumerate(self.shape) if d is None), 0)
        return 0

    @property
    def batch_dynamic(self) -> bool:
        return len(self.shape) > 0 and self.shape[self.batch_axis] is None

    @property
    def samples_per_feed(self) -> int:
        """How many rows of the batch axis one model call takes when that axis is fixed."""
        return 1 if not self.shape or self.batch_dynamic else self.shape[self.batch_axis]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        # dim_param, no value, and the -1 or 0 some exporters (Paddle2ONNX) write all mean "any size"
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def check_feed(feed: Mapping[str, np.ndarray], specs: list[InputSpec], where: str = "data") -> None:
    """Raise when one input dict does not fit the model (names, dtypes, ranks, fixed dims)."""
    expected = [spec.name for spec in specs]
    if set(feed) != set(expected):
        raise EdgeoptError(f"{where}: inputs named {sorted(feed)} do not match the model's inputs {expected}")
    for spec in specs:
        array = feed[spec.name]
        if not isinstance(array, np.ndarray):
            raise EdgeoptError(f"{where}: input {spec.name!r} is {type(array).__name__}; expected a numpy array")
        if array.dtype != spec.dtype:
            raise EdgeoptError(f"{where}: input {spec.name!r} has dtype {array.dtype}; the model expects {spec.dtype}")
        if array.ndim != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, array.shape)):
            shape = tuple("?" if d is None else d for d in spec.shape)
            raise EdgeoptError(f"{where}: input {spec.name!r} has shape {array.shape}; the model expects {shape}")


class Batch(dict):
    """An input dict holding several samples along axis 0 of every input (what
    :meth:`Dataset.batches` yields when the model's batch axis is dynamic): it may be cut into
    smaller batches. A plain dict is one model call, never cut."""


class Dataset:
    """Arrays named by model input, samples along the batch axis, and optional labels."""

    def __init__(self, arrays: dict[str, np.ndarray], specs: list[InputSpec], labels: np.ndarray | None = None,
                 where: str = "data"):
        self.specs = specs
        self.where = where
        if not arrays:
            raise EdgeoptError(f"{where}: no arrays; expected one per model input {[s.name for s in specs]}")
        if len(specs) == 1 and set(arrays) == {"x"} and specs[0].name != "x":
            arrays = {specs[0].name: arrays["x"]}
        names = [spec.name for spec in specs]
        if set(arrays) != set(names):
            raise EdgeoptError(f"{where}: arrays named {sorted(arrays)} do not match the model's inputs {names}"
                               + (" (a single array may be named 'x')" if len(names) == 1 else ""))
        self.stacked = {}
        counts = set()
        for spec in specs:
            array = arrays[spec.name]
            if array.dtype != spec.dtype:
                raise EdgeoptError(f"{where}: array {spec.name!r} has dtype {array.dtype}; "
                                   f"the model expects {spec.dtype}")
            stacked = array.ndim == len(spec.shape) + 1
            if not stacked and array.ndim != len(spec.shape):
                raise EdgeoptError(f"{where}: array {spec.name!r} has shape {array.shape}; expected samples "
                                   f"along the batch axis of {_shape_text(spec.shape)}")
            self.stacked[spec.name] = stacked
            axis = 0 if stacked else spec.batch_axis
            want = spec.shape if stacked else tuple(d for i, d in enumerate(spec.shape) if i != axis)
            sample_shape = tuple(d for i, d in enumerate(array.shape) if i != axis)
            if any(w is not None and w != g for w, g in zip(want, sample_shape)):
                raise EdgeoptError(f"{where}: array {spec.name!r} has shape {array.shape}; the model expects "
                                   f"{_shape_text(spec.shape)}")
            per_feed = 1 if stacked else spec.samples_per_feed
            rows = array.shape[axis] if array.ndim else 1
            if rows % per_feed:
                raise EdgeoptError(f"{where}: array {spec.name!r} has {rows} rows on axis {axis}; the model takes "
                                   f"exactly {per_feed} per call, so expected a multiple of {per_feed}")
            counts.add(rows // per_feed)
        if len(counts) != 1:
            raise EdgeoptError(f"{where}: arrays hold different numbers of samples {sorted(counts)}")
        self.count = counts.pop()
        if self.count == 0:
            raise EdgeoptError(f"{where}: the data set is empty; expected at least one sample")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or len(labels) != self.count or not np.issubdtype(labels.dtype, np.integer):
                raise EdgeoptError(f"{where}: 'labels' must be {self.count} integers (one per sample), "
                                   f"got shape {labels.shape} dtype {labels.dtype}")
        self.arrays = arrays
        self.labels = labels

    def __len__(self) -> int:
        return self.count

    @property
    def can_batch(self) -> bool:
        return all(spec.batch_dynamic and not self.stacked[spec.name] for spec in self.specs)

    def batches(self, batch_size: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Input dicts of ``batch_size`` samples (1 when the model's batch axis is fixed)."""
        count = self.count if limit is None else min(limit, self.count)
        step = batch_size if self.can_batch else 1
        specs = {spec.name: spec for spec in self.specs}
        divisible = self.can_batch and all(spec.batch_axis == 0 for spec in self.specs)
        for start in range(0, count, step):
            stop = min(start + step, count)
            feed = Batch() if divisible else {}
            for name, array in self.arrays.items():
                spec = specs[name]
                if self.stacked[name]:
                    feed[name] = np.asarray(array[start])
                    continue
                rows = spec.samples_per_feed
                index = [slice(None)] * array.ndim
                index[spec.batch_axis] = slice(start * rows, stop * rows)
                feed[name] = array[tuple(index)]
            yield feed

    def subset(self, indices) -> "Dataset":
        """The samples at ``indices`` (models that take one sample per call along axis 0)."""
        arrays = {name: array[indices] for name, array in self.arrays.items()}
        labels = None if self.labels is None else self.labels[indices]
        return Dataset(arrays, self.specs, labels, self.where)

    def save(self, path: "str | os.PathLike") -> None:
        from .model_io import write_bytes_atomic
        import io

        buffer = io.BytesIO()
        extra = {} if self.labels is None else {LABELS: self.labels}
        np.savez_compressed(buffer, **self.arrays, **extra)
        write_bytes_atomic(path, buffer.getvalue())


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def load_npz(path: "str | os.PathLike", specs: list[InputSpec]) -> Dataset:
    path = pathlib.Path(path)
    if not path.is_file():
        raise EdgeoptError(f"{path}: no such file; expected an .npz of arrays named by model input")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise EdgeoptError(f"{path}: not a readable .npz archive ({type(exc).__name__}); expected arrays "
                           "named by model input") from None
    labels = arrays.pop(LABELS, None)
    return Dataset(arrays, specs, labels, where=str(path))


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a folder of images becomes model input: resized to the model's spatial size (or
    ``size``), scaled to [0, 1], normalised by ``(x - mean) / std`` per channel, laid out as the
    model's input (NCHW or NHWC, detected from where its 1- or 3-channel axis is)."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    size: tuple[int, int] | None = None


def load_image_folder(path: "str | os.PathLike", specs: list[InputSpec],
                      preprocessing: ImagePreprocessing = ImagePreprocessing()) -> Dataset:
    """Images in ``path`` (or in class subfolders, which then give integer labels, sorted by name)."""
    path = pathlib.Path(path)
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].dtype != np.float32:
        raise EdgeoptError(f"{path}: an image folder feeds models with one float32 4-D input; "
                           "this model needs an .npz")
    try:
        from PIL import Image
    except ImportError:
        raise EdgeoptError("reading an image folder needs Pillow: pip install 'edgeopt[images]'") from None
    spec = specs[0]
    channels_first = spec.shape[1] in (1, 3)
    channels = spec.shape[1] if channels_first else spec.shape[3]
    height, width = (spec.shape[2:4] if channels_first else spec.shape[1:3])
    if preprocessing.size:
        height, width = preprocessing.size
    if not height or not width or channels not in (1, 3):
        raise EdgeoptError(f"{path}: cannot tell the image size or channels from input shape "
                           f"{_shape_text(spec.shape)}; pass the size explicitly")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    files = ([(f, i) for i, c in enumerate(classes) for f in sorted((path / c).iterdir())] if classes
             else [(f, None) for f in sorted(path.iterdir())] if path.is_dir() else [])
    files = [(f, label) for f, label in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not path.is_dir():
        raise EdgeoptError(f"{path}: not a folder; expected a folder of images or an .npz")
    if not files:
        raise EdgeoptError(f"{path}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
        except Exception as exc:
            raise EdgeoptError(f"{file}: not a readable image ({type(exc).__name__})") from None
        array = array.reshape(height, width, channels)
        images.append((array - mean) / std)
    batch = np.stack(images).astype(np.float32)
    if channels_first:
        batch = batch.transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return Dataset({spec.name: np.ascontiguousarray(batch)}, specs, labels, where=str(path))


def load_data(source, specs: list[InputSpec], preprocessing: ImagePreprocessing | None = None) -> Dataset:
    """A path (.npz file or image folder) or a :class:`Dataset` to a checked :class:`Dataset`."""
    if isinstance(source, Dataset):
        return source
    path = pathlib.Path(source)
    if path.is_dir():
        return load_image_folder(path, specs, preprocessing or ImagePreprocessing())
    return load_npz(path, specs)


def iterate_feeds(source, specs: list[InputSpec], where: str = "calibration data",
                  batch_size: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """Input dicts from a path, :class:`Dataset`, dict of arrays, or any iterable of input dicts.

    Each dict is checked; an empty source raises.
    """
    if isinstance(source, (str, os.PathLike, Dataset)):
        yield from load_data(source, specs).batches(batch_size)
        return
    if isinstance(source, Mapping):
        labels = source.get(LABELS)
        arrays = {k: v for k, v in source.items() if k != LABELS}
        yield from Dataset(arrays, specs, labels, where).batches(batch_size)
        return
    if not isinstance(source, Iterable):
        raise EdgeoptError(f"{where}: got {type(source).__name__}; expected a path, a dict of arrays or an "
                           "iterable of input dicts")
    seen = False
    for index, feed in enumerate(source):
        if not isinstance(feed, Mapping):
            raise EdgeoptError(f"{where}: item {index} is {type(feed).__name__}; expected a dict of input arrays")
        feed = {k: v for k, v in feed.items() if k != LABELS}
        check_feed(feed, specs, f"{where} item {index}")
        seen = True
        yield feed
    if not seen:
        raise EdgeoptError(f"{where}: the data set is empty; expected at least one sample")
