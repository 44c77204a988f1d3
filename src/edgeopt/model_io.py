"""Reading and writing ONNX files with strict checks and all-or-nothing writes."""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

import onnx

from . import external_data
from .errors import EdgeoptError

logger = logging.getLogger(__name__)


def load_model(source: "str | os.PathLike | onnx.ModelProto") -> onnx.ModelProto:
    """Load and check an ONNX model; raise :class:`EdgeoptError` with one line when it is not one."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        _check(model, "the model given")
        return model
    path = pathlib.Path(source)
    if not path.is_file():
        raise EdgeoptError(f"{path}: no such file; expected an ONNX model (.onnx)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for garbage or truncation
        raise EdgeoptError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                           "expected a complete .onnx file") from None
    _check(model, str(path))
    return model


def _check(model: onnx.ModelProto, where: str) -> None:
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise EdgeoptError(f"{where}: not an ONNX model with a graph (no nodes found); "
                           "expected a complete .onnx file")
    try:
        external_data.check(model)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"{where}: invalid ONNX model ({first_line[:200]})") from None


def passes_full_check(model: onnx.ModelProto) -> bool:
    """Whether onnx's checker with shape inference accepts the model (some models that run fine
    declare output shapes inference disagrees with; their outputs get the plain check)."""
    try:
        external_data.check(model, full_check=True)
        return True
    except Exception:
        return False


def check_writable(path: "str | os.PathLike", *, inputs: tuple = ()) -> pathlib.Path:
    """Fail early, before any work, when ``path`` cannot be written or would overwrite an input."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise EdgeoptError(f"{path}: is a directory; expected a file path to write")
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise EdgeoptError(f"{path}: cannot write, folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EdgeoptError(f"{path}: cannot write, folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise EdgeoptError(f"{path}: cannot write, the file is read-only")
    for other in inputs:
        if other is not None and pathlib.Path(other).exists() and path.exists() \
                and path.resolve() == pathlib.Path(other).resolve():
            raise EdgeoptError(f"{path}: is also an input; choose another output path")
    return path


def write_bytes_atomic(path: "str | os.PathLike", data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so that a failure
    never leaves a partial file behind."""
    path = pathlib.Path(path)
    check_writable(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_model(model: onnx.ModelProto, path: "str | os.PathLike", external_above: int | None = None
               ) -> pathlib.Path:
    """Serialise ``model`` and write it atomically; returns the path written. A model larger than
    ``external_above`` bytes (default: 64 MB under protobuf's 2 GiB limit, past which nothing
    serialises) keeps its tensors in ``<name>.data`` beside it (both files written through
    temporary names and renamed, the data file first)."""
    if external_above is None:
        external_above = external_data.PROTOBUF_LIMIT - (64 << 20)
    if external_data.byte_size(model) <= external_above:
        data = model.SerializeToString()
        write_bytes_atomic(path, data)
        logger.info("wrote %s (%d bytes)", path, len(data))
        return pathlib.Path(path)
    return _save_with_external_data(model, pathlib.Path(path))


def _save_with_external_data(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    check_writable(path)
    data_name = f"{path.name}.data"
    check_writable(path.parent / data_name)
    folder = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        external_data.write(model, os.path.join(folder, path.name), data_name)
        os.replace(os.path.join(folder, data_name), path.parent / data_name)
        os.replace(os.path.join(folder, path.name), path)
    finally:
        for leftover in pathlib.Path(folder).glob("*"):
            leftover.unlink()
        os.rmdir(folder)
    logger.info("wrote %s with its tensors in %s", path, data_name)
    return path
