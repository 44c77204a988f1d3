"""Shared fixtures: the inline models saved to a temporary folder, and file fingerprints."""

from __future__ import annotations

import hashlib
import pathlib
import sys

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import models  # noqa: E402 (after the sys.path insert)


def fingerprint(folder: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def conv_files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """conv_net saved as ONNX, plus labelled calibration/evaluation .npz files for it."""
    case = models.CASES["conv_net"]
    model_path = tmp_path / "conv.onnx"
    onnx.save(case.build(), str(model_path))
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **case.feeds(seed=1, count=32))
    evaluation = tmp_path / "evaluation.npz"
    labels = np.random.default_rng(5).integers(0, 10, size=24).astype(np.int64)
    np.savez(evaluation, labels=labels, **case.feeds(seed=2, count=24))
    return {"model": model_path, "calibration": calibration, "evaluation": evaluation}
