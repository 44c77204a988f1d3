"""Real or realistic, offline, seeded inputs for the third-party models (benchmarks/thirdparty.py).

Every builder takes a ``split`` ("calibration" or "evaluation") and draws the two from disjoint
sources (other photos, other words, other files, other text), so the held-out numbers are not
measured on what calibration saw. Sources, all installable offline:

- photos and LFW face crops from scikit-image (``skimage.data``), text scenes drawn with Pillow
  in Debian's DejaVu fonts (``fonts-dejavu-core``; PIL's own font when it is missing);
- English words from ``/usr/share/dict/words`` (Debian ``wamerican``), falling back to the words
  of the Python standard library's docstrings;
- Chinese text from Debian ``fortunes-zh``;
- real files from the Python installation and ``/usr/share`` for the byte classifier.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("calibration", "evaluation")
FONT_DIR = pathlib.Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf")
DICTIONARY = pathlib.Path("/usr/share/dict/words")
FORTUNES = pathlib.Path("/usr/share/games/fortunes")


def _seed(split: str, salt: int) -> int:
    """One fixed seed per (split, builder): the two splits never share a random stream."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return 1000 * salt + SPLITS.index(split)


# --- photos -------------------------------------------------------------------------------------

def photos(split: str) -> list[np.ndarray]:
    """RGB uint8 photos shipped inside scikit-image, alternate ones per split (disjoint)."""
    from .cases import natural_photos

    rgb = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in natural_photos()]
    rgb = [p[..., :3] for p in rgb]
    return rgb[SPLITS.index(split)::2]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def photo_crops(split: str, count: int, height: int, width: int, salt: int = 1) -> np.ndarray:
    """``count`` random crops (a quarter to all of the shorter side) of this split's photos, HWC uint8."""
    rng = np.random.default_rng(_seed(split, salt))
    pool = photos(split)
    crops = []
    for index in range(count):
        photo = pool[index % len(pool)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        crop_w = min(w, int(side * width / height))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - crop_w + 1))
        crops.append(_resize(photo[top:top + side, left:left + crop_w], height, width))
    return np.stack(crops)


def _lfw_faces(split: str) -> list[np.ndarray]:
    """The 50 LFW face crops (grey uint8 25x25) of this split, see :func:`lfw_windows`."""
    from skimage import data

    images = data.lfw_subset()
    offset = 0 if split == "calibration" else 50
    return [(255 * images[i]).clip(0, 255).astype(np.uint8) for i in range(offset, offset + 50)]


def faces_in_photos(split: str, count: int, height: int, width: int) -> np.ndarray:
    """Photo crops with a real LFW face pasted into every other one at 12-36 px, the face sizes a
    face detector's first stage looks for in an image pyramid; HWC uint8."""
    rng = np.random.default_rng(_seed(split, 13))
    crops = photo_crops(split, count, height, width, salt=13)
    faces = _lfw_faces(split)
    for index in range(0, count, 2):
        side = int(rng.integers(12, 37))
        face = np.repeat(_resize(faces[int(rng.integers(len(faces)))], side, side)[..., None], 3, axis=2)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops[index, top:top + side, left:left + side] = face
    return crops


def lfw_windows(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real face and non-face crops from scikit-image's LFW subset (200 grey 25x25 images: 100
    faces, then 100 non-faces), resized to ``size`` and replicated to RGB; the calibration split
    takes images 0-49 and 100-149, the evaluation split the others. Returns (images, is_face)."""
    from skimage import data

    images = data.lfw_subset()
    offset = 0 if split == "calibration" else 50
    chosen = list(range(offset, offset + 50)) + list(range(100 + offset, 150 + offset))
    grey = [(255 * images[i]).clip(0, 255).astype(np.uint8) for i in chosen]
    rgb = np.stack([np.repeat(_resize(g, size, size)[..., None], 3, axis=2) for g in grey])
    return rgb, np.array([i < 100 for i in chosen])


# --- text ---------------------------------------------------------------------------------------

def fonts() -> list[pathlib.Path]:
    found = [FONT_DIR / name for name in FONT_FILES if (FONT_DIR / name).is_file()]
    if not found:
        logger.warning("no DejaVu fonts in %s (apt-get install fonts-dejavu-core); using PIL's default font",
                       FONT_DIR)
    return found


def font(size: int, rng: np.random.Generator):
    from PIL import ImageFont

    files = fonts()
    if not files:
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(files[int(rng.integers(len(files)))]), size)


def english_words(split: str) -> list[str]:
    """Lower-case words of 3 to 12 letters, seeded order; even positions calibrate, odd evaluate."""
    if DICTIONARY.is_file():
        words = {w.strip().lower() for w in DICTIONARY.read_text(errors="ignore").split()}
    else:
        logger.warning("%s missing (apt-get install wamerican): using standard-library docstrings", DICTIONARY)
        words = set(stdlib_words())
    words = sorted(w for w in words if re.fullmatch(r"[a-z]{3,12}", w))
    order = np.random.default_rng(7).permutation(len(words))
    return [words[i] for i in order[SPLITS.index(split)::2]]


def stdlib_words() -> list[str]:
    """The distinct lower-case words (3-12 letters) of standard-library docstrings, sorted: English
    that every Python installation has, the same on every machine with this Python."""
    import importlib
    import inspect

    parts = []
    for name in ("json", "os", "pathlib", "collections", "itertools", "functools", "string", "textwrap",
                 "random", "statistics", "datetime", "shutil", "tempfile", "argparse", "logging"):
        module = importlib.import_module(name)
        parts += [inspect.getdoc(m) or "" for _, m in inspect.getmembers(module) if callable(m)]
    return sorted(set(re.findall(r"\b[a-z]{3,12}\b", "\n".join(parts).lower())))


def _contrasting(background: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A text colour that reads on ``background`` (dark on light, light on dark), slightly tinted."""
    light = background.mean() > 127
    base = rng.integers(0, 70, 3) if light else rng.integers(190, 256, 3)
    return tuple(int(v) for v in base)


def text_scene(background: np.ndarray, words: list[str], rng: np.random.Generator) -> np.ndarray:
    """Words drawn at random places, sizes and fonts on a photo, some on a plain label box, as
    signs, captions and click-captcha characters appear; HWC uint8."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(background.copy())
    draw = ImageDraw.Draw(image)
    height, width = background.shape[:2]
    for word in words:
        face = font(int(rng.integers(max(12, height // 24), max(13, height // 8))), rng)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=face)
        x = int(rng.integers(0, max(1, width - (right - left))))
        y = int(rng.integers(0, max(1, height - (bottom - top))))
        region = background[y:y + bottom, x:x + right]
        if rng.random() < 0.3:
            box = tuple(int(v) for v in rng.integers(200, 256, 3))
            draw.rectangle((x - 3, y - 3, x + right + 3, y + bottom + 3), fill=box)
            region = np.full((1, 1, 3), 230)
        draw.text((x, y), word, font=face, fill=_contrasting(region if region.size else background, rng))
    return np.asarray(image)


def text_scenes(split: str, count: int, size: int, salt: int) -> np.ndarray:
    """``count`` square scenes of 2-7 words on this split's photo crops (and skimage's real
    printed ``page`` and ``text`` images among the evaluation backgrounds), HWC uint8."""
    rng = np.random.default_rng(_seed(split, salt))
    backgrounds = photo_crops(split, count, size, size, salt)
    if split == "evaluation":
        from skimage import data

        for index, scan in enumerate((data.page(), data.text())):
            backgrounds[index] = _resize(np.repeat(scan[..., None], 3, axis=2), size, size)
    words = english_words(split)
    scenes = []
    for index in range(count):
        chosen = [words[int(i)] for i in rng.integers(0, len(words), int(rng.integers(2, 8)))]
        scenes.append(text_scene(backgrounds[index], chosen, rng))
    return np.stack(scenes)


def text_line(word: str, background: np.ndarray, height: int, rng: np.random.Generator,
              upside_down: bool = False) -> np.ndarray:
    """One word (or two) drawn large on a photo strip, cropped to the text as a text detector
    would crop it, resized to ``height`` keeping the aspect ratio; HWC uint8."""
    from PIL import Image, ImageDraw

    face = font(int(rng.integers(28, 44)), rng)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), word, font=face)
    pad = int(rng.integers(2, 10))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    strip = Image.fromarray(background).resize((w, h), Image.BILINEAR)
    strip = Image.blend(strip, Image.new("RGB", (w, h), (235, 235, 235)), float(rng.uniform(0.3, 0.8)))
    ImageDraw.Draw(strip).text((pad - left, pad - top), word, font=face,
                               fill=_contrasting(np.asarray(strip), rng))
    if upside_down:
        strip = strip.rotate(180)
    new_width = max(8, round(w * height / h))
    return np.asarray(strip.resize((new_width, height), Image.BILINEAR))


def pad_line(line: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """PP-OCR's recogniser/classifier layout: squeeze to ``width`` if longer, else keep and pad the
    rest (the caller fills the pad with 0 after normalisation, as PaddleOCR does)."""
    from PIL import Image

    height = line.shape[0]
    used = min(width, line.shape[1])
    if line.shape[1] > width:
        line = np.asarray(Image.fromarray(line).resize((width, height), Image.BILINEAR))
    return line, used


def captcha_image(text: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A captcha in the style the ``captcha`` package draws (light noisy background, rotated,
    overlapping characters, a noise curve and dots), drawn here with a seeded generator because
    that package draws from ``secrets`` and cannot be made reproducible; grey uint8 [H, W]."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("L", (width, height), int(rng.integers(225, 256)))
    x = int(rng.integers(2, 10))
    for char in text:
        face = font(int(rng.integers(int(height * 0.55), int(height * 0.8))), rng)
        glyph = Image.new("L", (height, height), 0)
        ImageDraw.Draw(glyph).text((height // 6, 0), char, font=face, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, expand=False)
        shade = int(rng.integers(10, 150))
        image.paste(Image.new("L", glyph.size, shade), (x, int(rng.integers(-6, max(-5, height - glyph.size[1] + 6)))),
                    glyph)
        x += int(glyph.size[0] * rng.uniform(0.45, 0.7))
    draw = ImageDraw.Draw(image)
    points = [(int(px), int(height * (0.5 + 0.25 * np.sin(px / width * 6.28 * rng.uniform(0.5, 1.5)))))
              for px in range(0, width, 4)]
    draw.line(points, fill=int(rng.integers(40, 140)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(30, 90))):
        px, py = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.point((px, py), fill=int(rng.integers(0, 200)))
    return np.asarray(image.filter(ImageFilter.SMOOTH))


def captcha_texts(split: str, count: int) -> list[str]:
    """4-6 characters from digits and letters, as common captchas use; seeded per split."""
    rng = np.random.default_rng(_seed(split, 11))
    alphabet = "0123456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
    return ["".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), int(rng.integers(4, 7))))
            for _ in range(count)]


# --- Chinese text -------------------------------------------------------------------------------

def chinese_passages(split: str) -> list[str]:
    """Fortunes from Debian ``fortunes-zh`` (chinese, tang300, song100), control sequences and
    whitespace removed, seeded order; even positions calibrate, odd evaluate."""
    files = [FORTUNES / name for name in ("chinese", "tang300", "song100") if (FORTUNES / name).is_file()]
    if not files:
        raise RuntimeError(f"no Chinese fortunes under {FORTUNES}: apt-get install fortunes-zh")
    passages = []
    for file in files:
        for entry in file.read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            text = re.sub(r"\x1b\[[0-9;]*m|\s+", "", entry)
            if len(text) >= 8:
                passages.append(text)
    order = np.random.default_rng(5).permutation(len(passages))
    return [passages[i] for i in order[SPLITS.index(split)::2]]


# --- real files for the byte classifier ---------------------------------------------------------

def real_files(split: str, count: int) -> list[pathlib.Path]:
    """Files of many kinds that every machine here has (the Python standard library's sources,
    bytecode and extension modules, Debian's docs, licences and /etc, fonts, scikit-image's
    images), at most 4 per suffix so no kind dominates; seeded order, even positions calibrate,
    odd evaluate (third-party site-packages are left out: they differ between machines)."""
    import skimage

    stdlib = pathlib.Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    roots = [stdlib, pathlib.Path(skimage.__file__).parent / "data", pathlib.Path("/usr/share/doc"),
             pathlib.Path("/usr/share/common-licenses"), pathlib.Path("/etc"), pathlib.Path("/usr/share/fonts"),
             pathlib.Path("/usr/share/games/fortunes")]
    by_suffix: dict[str, list[pathlib.Path]] = {}
    for root in roots:
        for path in _files_under(root):
            by_suffix.setdefault(path.suffix.lower() or "(none)", []).append(path)
    rng = np.random.default_rng(3)
    chosen = []
    for suffix in sorted(by_suffix):
        paths = by_suffix[suffix]
        chosen += [paths[int(i)] for i in rng.permutation(len(paths))[:4]]
    chosen = [chosen[int(i)] for i in rng.permutation(len(chosen))]
    return chosen[SPLITS.index(split)::2][:count]


def _files_under(root: pathlib.Path) -> list[pathlib.Path]:
    """Regular files of at least 8 bytes (magika's minimum) under ``root``, sorted, skipping
    site-packages folders."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d != "site-packages")
        for name in sorted(files):
            path = pathlib.Path(folder) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= 8:
                found.append(path)
    return found


def magika_features(path: pathlib.Path, beg_size: int = 1024, end_size: int = 1024, block_size: int = 4096,
                    padding: int = 256) -> np.ndarray:
    """The model input magika 1.0.3 builds for a file, re-implemented from its documented steps:
    read at most ``block_size`` bytes at each end, strip leading whitespace from the first block
    and trailing whitespace from the last, keep the first ``beg_size`` and last ``end_size``
    bytes, pad with the padding token (after the beginning, before the end); int32 [2048]."""
    data = path.read_bytes()
    size = min(block_size, len(data))
    beg = list(data[:size].lstrip()[:beg_size])
    end = list(data[len(data) - size:].rstrip())
    end = end[-end_size:] if end else []
    beg = beg + [padding] * (beg_size - len(beg))
    end = [padding] * (end_size - len(end)) + end
    return np.array(beg + end, dtype=np.int32)
