"""Models over protobuf's 2 GiB limit: no ModelProto that large can be serialised, so onnx's checker,
its shape inference and ONNX Runtime get such a model from disk, its tensors in a file beside it.

:func:`write` writes each large tensor's bytes to the data file and a skeleton of the model (a new,
small message with those tensors as external-data references) to the .onnx file: the model in
memory is neither changed nor copied. (onnx's ``convert_model_to_external_data`` converts the
model itself, so a caller copies it first; and emptying a tensor in place gives no memory back,
since protobuf keeps a message's memory until the message goes.)
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pathlib
import shutil
import tempfile

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

#: The largest message protobuf serialises (2 GiB - 1 byte).
PROTOBUF_LIMIT = (2 << 30) - 1
#: Tensors of at least this many bytes go to the data file.
EXTERNAL_MIN_BYTES = 1024


#: A graph with fewer nodes than this and tensors under half the limit is far from it: its
#: messages other than tensors take well under 1 GiB (counting a 90 MB model's bytes took 85 ms,
#: once per session built).
FAR_BELOW_NODES = 100_000


def too_large(model: onnx.ModelProto) -> bool:
    if len(model.graph.node) < FAR_BELOW_NODES and \
            sum(_tensor_bytes(tensor) for tensor in _tensors(model.graph)) < PROTOBUF_LIMIT // 2:
        return False
    return byte_size(model) > PROTOBUF_LIMIT


def _tensor_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's values, from its shape and type (0 for external ones)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        return 0
    if tensor.data_type == TensorProto.STRING:
        return sum(len(value) for value in tensor.string_data)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return tensor.ByteSize()
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def byte_size(model: onnx.ModelProto) -> int:
    """The model's serialised size. Counting a message's bytes is slow past a few hundred MB and
    refused past the limit, so the tensors' sizes (from shape and type) decide first, and a model
    over the limit is counted as its skeleton plus those sizes (within a few bytes a tensor)."""
    if sum(_tensor_bytes(tensor) for tensor in _tensors(model.graph)) <= PROTOBUF_LIMIT:
        try:
            return model.ByteSize()
        except EncodeError:
            pass
    sizes: list[int] = []
    skeleton = _skeleton(model, "size", lambda tensor, _: sizes.append(_tensor_bytes(tensor)), read=False)
    return skeleton.ByteSize() + sum(sizes)


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                yield from _tensors(body)


def _large(tensor: TensorProto) -> bool:
    return tensor.data_type != TensorProto.STRING and _tensor_bytes(tensor) >= EXTERNAL_MIN_BYTES


def _stub(tensor: TensorProto, data_name: str, offset: int, length: int) -> TensorProto:
    stub = TensorProto(name=tensor.name, data_type=tensor.data_type, doc_string=tensor.doc_string,
                       data_location=TensorProto.EXTERNAL)
    stub.dims.extend(tensor.dims)
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED:
            getattr(target, field.name).extend(value)
        elif field.message_type:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _skeleton(model: onnx.ModelProto, data_name: str, sink, constants: bool = True, read: bool = True
              ) -> onnx.ModelProto:
    """A new model equal to ``model`` but for its large initializers (and, with ``constants``, its
    large Constant values), which are references into ``data_name``; ``sink(tensor, bytes)``
    receives their bytes in order (offsets follow from lengths; ``read=False``: ``None`` for the
    bytes, and the offsets from the tensors' shapes)."""
    offset = 0

    def external(tensor: TensorProto) -> TensorProto:
        nonlocal offset
        if read:
            raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            length = len(raw)
        else:
            raw, length = None, _tensor_bytes(tensor)
        sink(tensor, raw)
        offset += length
        return _stub(tensor, data_name, offset - length, length)

    def graph_of(graph: onnx.GraphProto) -> onnx.GraphProto:
        copy = onnx.GraphProto()
        _copy_fields(graph, copy, skip=("initializer", "node"))
        copy.initializer.extend(external(t) if _large(t) else t for t in graph.initializer)
        copy.node.extend(node_of(node) for node in graph.node)
        return copy

    def node_of(node: onnx.NodeProto) -> onnx.NodeProto:
        if not any(a.type in (onnx.AttributeProto.TENSOR, onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):
            return node
        copy = onnx.NodeProto(input=node.input, output=node.output, name=node.name, op_type=node.op_type,
                              domain=node.domain, doc_string=node.doc_string)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and constants and _large(attribute.t):
                copy.attribute.append(onnx.AttributeProto(name=attribute.name, type=attribute.type,
                                                          t=external(attribute.t)))
            elif attribute.type == onnx.AttributeProto.GRAPH:
                copy.attribute.append(onnx.AttributeProto(name=attribute.name, type=attribute.type,
                                                          g=graph_of(attribute.g)))
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                copy.attribute.append(onnx.AttributeProto(name=attribute.name, type=attribute.type,
                                                          graphs=[graph_of(g) for g in attribute.graphs]))
            else:
                copy.attribute.append(attribute)
        return copy

    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip=("graph",))
    skeleton.graph.CopyFrom(graph_of(model.graph))
    return skeleton


def write(model: onnx.ModelProto, path: "str | os.PathLike", data_name: str, data: bool = True) -> None:
    """Write ``model`` to ``path`` with its tensors of EXTERNAL_MIN_BYTES or more in ``data_name``
    (a file name in the same folder); ``model`` is unchanged. ``data=False`` writes a data file of
    the right size without the bytes (a sparse file: enough for the checker and shape inference,
    which look at the file, not into it)."""
    path = pathlib.Path(path)
    with open(path.parent / data_name, "wb") as file:
        if data:
            skeleton = _skeleton(model, data_name, lambda _, raw: file.write(raw))
        else:
            sizes: list[int] = []
            skeleton = _skeleton(model, data_name, lambda _, raw: sizes.append(len(raw)))
            file.truncate(sum(sizes))
    path.write_bytes(skeleton.SerializeToString())


@contextlib.contextmanager
def on_disk(model: onnx.ModelProto, data: bool = True):
    """``model`` written to a temporary folder with its tensors beside it (see :func:`write`);
    yields the .onnx path and removes the folder after."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="edgeopt-large-"))
    try:
        path = folder / "model.onnx"
        write(model, path, "model.onnx.data", data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def session_parts(model: onnx.ModelProto) -> tuple[bytes, list[str], list[np.ndarray]]:
    """What ONNX Runtime needs to load a model too large to serialise, without a file: the
    skeleton's bytes and its large initializers as arrays (for ``add_external_initializers``)."""
    names, arrays = [], []

    def keep(tensor: TensorProto, raw: bytes) -> None:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        names.append(tensor.name)
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims)))

    skeleton = _skeleton(model, "in-memory.data", keep, constants=False)
    return skeleton.SerializeToString(), names, arrays


def check(model: onnx.ModelProto, full_check: bool = False) -> None:
    """onnx's checker, from disk when the model is too large to serialise."""
    if not too_large(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    with on_disk(model, data=False) as path:
        onnx.checker.check_model(str(path), full_check=full_check)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference; for a model too large to serialise, a copy holding the graph and
    the inferred value_info, its tensors not loaded (types and shapes only)."""
    if not too_large(model):
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    with on_disk(model, data=False) as path:
        inferred = path.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred))
        return onnx.load(str(inferred), load_external_data=False)


def files_of(path: "str | os.PathLike") -> list[pathlib.Path]:
    """The .onnx file and the external data files its tensors name (each once, in order)."""
    path = pathlib.Path(path)
    model = onnx.load(str(path), load_external_data=False)
    names: dict[str, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            names.update({entry.value: None for entry in tensor.external_data if entry.key == "location"})
    return [path] + [path.parent / name for name in names]


def gzip_size(paths: list[pathlib.Path]) -> int:
    """Bytes of the files, one after the other, after ``gzip -9`` (streamed, 16 MB at a time)."""
    class Counter:
        size = 0

        def write(self, chunk):
            self.size += len(chunk)

        def flush(self):
            pass

    counter = Counter()
    with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=9, mtime=0) as packed:
        for path in paths:
            with open(path, "rb") as source:
                while chunk := source.read(16 << 20):
                    packed.write(chunk)
    return counter.size
