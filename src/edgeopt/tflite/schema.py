"""A thin adapter over the TFLite schema that ships with ``ai-edge-litert`` (the ``tflite`` extra).

The generated module matches the runtime edgeopt measures on and has the object API (``ModelT``,
``TensorT``, ...). Two things it does not do are done here: buffers are aligned to 16 bytes, as
the schema asks for constant data (the generated ``BufferT.Pack`` aligns them to 1), and the file
gets its identifier ``TFL3``. Nothing else of the generated code is wrapped: the writer uses its
classes and enums directly through :func:`module`.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import EdgeoptError

FILE_IDENTIFIER = b"TFL3"
#: the schema version every file edgeopt writes declares
SCHEMA_VERSION = 3
BUFFER_ALIGNMENT = 16


@functools.lru_cache(maxsize=1)
def module():
    """``ai_edge_litert.schema_py_generated``, imported on first use."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise EdgeoptError("writing or reading .tflite files needs the tflite extra: "
                           "pip install 'edgeopt[tflite]'") from None
    return schema_py_generated


def aligned_buffer(data: bytes | None):
    """A ``BufferT`` whose bytes start at a multiple of 16 in the file (``None``: an empty buffer)."""
    schema = module()

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            offset = None
            if self.data:
                payload = bytes(self.data)
                builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                offset = builder.EndVector()
            schema.BufferStart(builder)
            if offset is not None:
                schema.BufferAddData(builder, offset)
            return schema.BufferEnd(builder)

    buffer = AlignedBuffer()
    buffer.data = data
    return buffer


def serialize(model) -> bytes:
    """The bytes of a ``ModelT`` (identifier ``TFL3``); the same model gives the same bytes."""
    import flatbuffers

    size = sum(len(buffer.data or b"") for buffer in model.buffers or [])
    builder = flatbuffers.Builder(size + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def parse(data: bytes, where: str = "the file"):
    """A ``ModelT`` read from ``.tflite`` bytes; a file that is not one is a one-line error."""
    schema = module()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise EdgeoptError(f"{where} is not a TFLite flatbuffer (expected the identifier TFL3 at byte 4)")
    try:
        return schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as exc:
        raise EdgeoptError(f"{where} is not a readable TFLite model: {exc}") from None


def builtin_name(code: int) -> str:
    """``BuiltinOperator`` value -> its name (``CONV_2D``)."""
    return _enum_names(module().BuiltinOperator).get(code, f"builtin {code}")


def tensor_type_name(code: int) -> str:
    return _enum_names(module().TensorType).get(code, f"type {code}")


@functools.cache
def _enum_names(enum) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


#: numpy dtype -> TensorType name
_TYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.float16): "FLOAT16", np.dtype(np.int32): "INT32",
          np.dtype(np.int64): "INT64", np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8",
          np.dtype(np.int16): "INT16", np.dtype(np.bool_): "BOOL"}


def tensor_type(dtype) -> int:
    """The ``TensorType`` of a numpy dtype (an unsupported one is an error naming it)."""
    dtype = np.dtype(dtype)
    if dtype not in _TYPES:
        raise EdgeoptError(f"TFLite has no tensor type for {dtype}; expected one of "
                           f"{', '.join(sorted(str(t) for t in _TYPES))}")
    return getattr(module().TensorType, _TYPES[dtype])


def numpy_dtype(tensor_type_code: int) -> np.dtype:
    name = tensor_type_name(tensor_type_code)
    for dtype, type_name in _TYPES.items():
        if type_name == name:
            return dtype
    raise EdgeoptError(f"edgeopt does not read TFLite tensors of type {name}")
