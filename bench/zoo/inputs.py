"""Input rows that resemble each zoo model's domain.

No zoo package ships data, so every generator here makes rows of the kind the model was built
for, each preprocessed the way its package documents it: rendered text lines and document pages
(text direction / page orientation), real Fashion-MNIST photos from the Debian package
`dataset-fashion-mnist` (image classifiers), the bytes of real files on this machine (file-type
detection), synthetic speech-like audio run through the wake-word package's own feature models,
and synthetic EEG spectrograms. They are realistic enough that the models' predictions spread
over several classes, which is all a robustness run needs; no labels are made.

Every generator is deterministic in its `seed`.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .cache import fashion_mnist_dir

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FONT_DIRS = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype"]
WORDS = ("the of and to in is for on with as by at from that this be are was or an it not data model "
         "file page line text report total amount date name order number value table figure section "
         "result method system input output invoice customer address account payment quantity price "
         "exitc compiler runtime early exit classifier batch segment threshold calibration agreement "
         "2026 17.5 3.14 100% #42 (a) [b] e-mail www ok").split()


# ---- text and documents ----------------------------------------------------------------------

def fonts() -> list:
    """TrueType fonts found on the machine, else Pillow's built-in scalable font."""
    from PIL import ImageFont

    files = []
    for d in FONT_DIRS:
        if os.path.isdir(d):
            files += sorted(str(p) for p in Path(d).rglob("*.ttf"))
    files = [f for f in files if "ExtraLight" not in f][:12]
    if files:
        return [lambda size, f=f: ImageFont.truetype(f, size) for f in files]
    return [lambda size: ImageFont.load_default(size=size)]


def random_phrase(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words))


def text_line(rng: np.random.Generator, font_makers: list):
    """One RGB text-line crop (dark text on a light, slightly noisy background), as OCR
    pipelines hand it to a text-direction classifier."""
    from PIL import Image, ImageDraw

    font = font_makers[rng.integers(len(font_makers))](int(rng.integers(18, 40)))
    text = random_phrase(rng, int(rng.integers(1, 7)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 10))
    w, h = max(8, right - left + 2 * pad), max(8, bottom - top + 2 * pad)
    bg = tuple(int(v) for v in rng.integers(190, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 90, size=3))
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=fg)
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0, rng.uniform(0, 12), arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def text_direction_rows(n: int, seed: int, height: int = 48, width: int = 192) -> np.ndarray:
    """Text lines for a 0/180-degree text-direction classifier (half of them upside down),
    resized to `height` keeping the aspect ratio, right-padded with zeros, scaled to [-1, 1]
    (the PaddleOCR classifier's preprocessing). float32 [n, 3, height, width]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    makers = fonts()
    out = np.zeros((n, 3, height, width), np.float32)
    for i in range(n):
        line = text_line(rng, makers)
        if rng.random() < 0.5:
            line = line[::-1, ::-1]
        h, w = line.shape[:2]
        new_w = min(width, int(np.ceil(height * w / h)))
        img = np.asarray(Image.fromarray(np.ascontiguousarray(line)).resize((new_w, height), Image.BILINEAR))
        out[i, :, :, :new_w] = (img.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def document_page(rng: np.random.Generator, font_makers: list, size: int):
    """A square RGB page: white paper, a few paragraphs of dark text in one font, sometimes a
    heading and a rule; then rotated by a random multiple of 90 degrees."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, size=3)))
    draw = ImageDraw.Draw(page)
    maker = font_makers[rng.integers(len(font_makers))]
    font_size = int(rng.integers(size // 28, size // 12))
    font = maker(font_size)
    y = int(rng.integers(4, size // 6))
    margin = int(rng.integers(4, size // 8))
    if rng.random() < 0.5:
        draw.text((margin, y), random_phrase(rng, 3).upper(), font=maker(int(font_size * 1.5)), fill=(0, 0, 0))
        y += int(font_size * 2.2)
    while y < size - font_size:
        words = int(rng.integers(2, 9))
        draw.text((margin, y), random_phrase(rng, words), font=font, fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
        y += int(font_size * rng.uniform(1.2, 1.8))
        if rng.random() < 0.1:
            draw.line((margin, y, size - margin, y), fill=(80, 80, 80), width=1)
            y += font_size // 2
    arr = np.rot90(np.asarray(page), k=int(rng.integers(4)))
    return np.ascontiguousarray(arr)


def page_orientation_rows(n: int, seed: int, size: int) -> np.ndarray:
    """Rotated document pages at `size` x `size`, ImageNet-normalised, float32 [n, 3, size, size]
    (both orientation classifiers in the zoo take this preprocessing)."""
    rng = np.random.default_rng(seed)
    makers = fonts()
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        page = document_page(rng, makers, size).astype(np.float32) / 255.0
        out[i] = ((page - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


# ---- real photos: Fashion-MNIST from Debian ----------------------------------------------------

def fashion_mnist(n: int, seed: int) -> np.ndarray:
    """`n` real Fashion-MNIST test photos (uint8 [n, 28, 28]), a seeded draw."""
    path = fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    return raw[rng.permutation(len(raw))[:n]]


def fashion_train(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` Fashion-MNIST training photos and labels (to train own-export models)."""
    d = fashion_mnist_dir()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return x, y


def photo_nhwc_caffe_rows(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Fashion-MNIST photos as colour NHWC images for a Caffe-style network (BGR, per-channel
    mean subtracted, 0..255 scale; Yahoo open_nsfw's preprocessing), lightly tinted so that the
    three channels differ. float32 [n, size, size, 3]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs = fashion_mnist(n, seed)
    out = np.empty((n, size, size, 3), np.float32)
    bgr_mean = np.array([104.0, 117.0, 123.0], np.float32)
    for i, im in enumerate(imgs):
        big = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)).astype(np.float32)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        out[i] = big[:, :, None] * tint - bgr_mean
    return out


def flat_pixel_rows(n: int, seed: int) -> np.ndarray:
    """Fashion-MNIST test photos as flat pixels in [0, 1] (what the own sklearn MLP takes)."""
    return (fashion_mnist(n, seed).reshape(n, -1) / 255.0).astype(np.float32)


# ---- file bytes (file-type detection) -------------------------------------------------------

FILE_ROOTS = ["/usr/share/doc", "/usr/share/common-licenses", "/usr/lib/python3", "/usr/share/perl",
              "/usr/include", "/etc", "/usr/bin", "/usr/share/pixmaps", "/usr/share/icons",
              "/usr/share/zoneinfo", "/usr/share/man", "/usr/lib/x86_64-linux-gnu"]


def machine_files(limit: int = 20000) -> list[str]:
    """Regular readable files (>= 64 bytes) under a fixed set of system folders, sorted."""
    found = []
    for root in FILE_ROOTS:
        count = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 64:
                        found.append(p)
                        count += 1
                except OSError:
                    continue
                if count >= limit // len(FILE_ROOTS):
                    break
            if count >= limit // len(FILE_ROOTS):
                break
    return found


def file_type_features(data: bytes, beg: int = 1024, end: int = 1024, block: int = 4096,
                       pad: int = 256) -> np.ndarray:
    """Magika's documented features of one file: up to `block` bytes from each end, whitespace
    stripped on the outer side, the first `beg` and last `end` of them, padded with `pad`.
    int32 [beg + end]."""
    head, tail = data[:block], data[-block:]
    if len(data) <= block:
        head = tail = data.strip()
    else:
        head, tail = head.lstrip(), tail.rstrip()
    b = list(head[:beg]) + [pad] * max(0, beg - len(head))
    e = [pad] * max(0, end - len(tail)) + list(tail[-end:] if tail else b"")
    return np.array(b[:beg] + e[-end:], np.int32)


def file_bytes_rows(n: int, seed: int) -> np.ndarray:
    """Features of `n` real files of this machine (text, scripts, headers, binaries, images,
    compressed man pages, time zones...), a seeded draw. int32 [n, 2048]."""
    files = machine_files()
    rng = np.random.default_rng(seed)
    pick = [files[i] for i in rng.permutation(len(files))[:n]]
    rows = []
    for p in pick:
        with open(p, "rb") as f:
            size = os.path.getsize(p)
            head = f.read(4096)
            if size > 4096:
                f.seek(max(4096, size - 4096))
                data = head + f.read()
            else:
                data = head
        rows.append(file_type_features(data))
    while len(rows) < n:  # fewer files than rows: repeat with a shifted start
        rows.append(np.roll(rows[len(rows) % len(pick)], 1))
    return np.stack(rows)


# ---- audio (wake words) -------------------------------------------------------------------------

def speech_like_audio(rng: np.random.Generator, seconds: float, rate: int = 16000) -> np.ndarray:
    """Synthetic speech-like audio at int16 scale: syllables of a pitched, formant-filtered
    buzz with random pitch contours, separated by pauses, over background noise."""
    n = int(seconds * rate)
    audio = rng.normal(0, rng.uniform(20, 300), n)
    t0 = int(rng.integers(0, rate // 2))
    while t0 < n - rate // 10:
        dur = int(rng.uniform(0.08, 0.35) * rate)
        t = np.arange(dur) / rate
        f0 = rng.uniform(90, 260) * (1 + rng.uniform(-0.2, 0.2) * t / t[-1])
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        for formant in rng.uniform([300, 900, 2200], [900, 2200, 3200]):
            voice = voice + 0.3 * np.sin(2 * np.pi * formant * t) * np.sin(phase)
        env = np.sin(np.pi * np.arange(dur) / dur) ** 2
        seg = slice(t0, min(n, t0 + dur))
        audio[seg] += (rng.uniform(1000, 8000) * env * voice)[: seg.stop - seg.start]
        t0 += dur + int(rng.uniform(0.02, 0.3) * rate)
    return np.clip(audio, -32768, 32767).astype(np.float32)


def wakeword_feature_rows(n: int, seed: int, melspec: str, embedding: str, frames: int) -> np.ndarray:
    """Speech-embedding windows of synthetic audio, computed with the wake-word package's own
    melspectrogram and embedding models (openWakeWord's pipeline: mel/10 + 2, 76-frame windows
    every 8 frames, `frames` embeddings per row). float32 [n, frames, 96]."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    mel = ort.InferenceSession(melspec, opts, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(embedding, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    mel_frames = (frames - 1) * 8 + 76
    seconds = (mel_frames + 3) * 0.01 + 0.03
    out = np.empty((n, frames, 96), np.float32)
    for i in range(n):
        audio = speech_like_audio(rng, seconds)[None]
        spec = mel.run(None, {mel.get_inputs()[0].name: audio})[0].squeeze() / 10 + 2
        windows = np.stack([spec[j:j + 76] for j in range(0, frames * 8, 8)])[:, :, :, None]
        out[i] = emb.run(None, {"input_1": windows.astype(np.float32)})[0].reshape(frames, 96)
    return out


# ---- EEG -------------------------------------------------------------------------------------

def eeg_spectrogram_rows(n: int, seed: int, bins: int = 100, steps: int = 300) -> np.ndarray:
    """Synthetic EEG log-spectrograms: a 1/f background with drifting alpha/beta bands and
    occasional broadband bursts. float32 [n, bins, steps]."""
    rng = np.random.default_rng(seed)
    f = np.arange(1, bins + 1, dtype=np.float32)[:, None]
    out = np.empty((n, bins, steps), np.float32)
    for i in range(n):
        base = -np.log(f) * rng.uniform(0.8, 1.6)
        alpha = rng.uniform(0, 2) * np.exp(-((f - rng.uniform(8, 12)) ** 2) / 4)
        beta = rng.uniform(0, 1) * np.exp(-((f - rng.uniform(15, 30)) ** 2) / 20)
        x = base + alpha + beta + rng.normal(0, 0.3, (bins, steps))
        for _ in range(int(rng.integers(0, 4))):
            s = int(rng.integers(0, steps - 20))
            x[:, s:s + int(rng.integers(5, 20))] += rng.uniform(0.5, 3)
        out[i] = x
    return out
