"""Run an exported cvkeras model on a device: ONNX Runtime (or LiteRT for ``.tflite``), no TensorFlow.

The model file carries everything needed -- labels, input size, preprocessing contract (see
``cvkeras.serving.metadata``) -- so a predictor is one call away from a file::

    >>> p = Predictor.load("export/model_int8.onnx", threads=2)
    >>> p.predict("daisy.jpg").label
    'daisy'

Two ways to use the CPU, chosen per call by ``mode`` (see :data:`MODES`): ``"latency"`` -- one image at a
time, ONNX Runtime threads spinning between operators, inline decoding into a preallocated input;
``"throughput"`` -- folders and batches, Pillow decoding the next batch in a small thread pool while the
runtime (threads sleeping, leaving the cores to the decoders) infers the current one; ``"auto"`` (default) --
latency for a single image, throughput for a sequence, each ONNX Runtime session made on first use.

Large JPEGs are decoded DCT-scaled at the size the model needs (``cvkeras.serving.preprocess.jpeg_scale``).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image

from cvkeras.serving.batches import Batch, decode_batches, default_workers
from cvkeras.serving.calibration import apply_temperature
from cvkeras.serving.errors import OptionError, first_line, quote
from cvkeras.serving.hints import failed_model_line, not_a_model_hint
from cvkeras.serving.metadata import FailedModelWarning, MetadataError, ModelMetadata
from cvkeras.serving.preprocess import JPEG_SCALING, load_resized
from cvkeras.serving.results import ImageInput, Prediction, is_single, ranked, source_name
from cvkeras.serving.runners import ModelError, OnnxRunner, Runner, TFLiteRunner
from cvkeras.serving.unknown import FEATURES_NAME, UnknownDetector

#: ``Predictor`` modes: settings for one image at a time, for batches and folders, or chosen per call.
MODES = ("latency", "throughput", "auto")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; else an :class:`OptionError` naming them."""
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, not {quote(mode)}")
    return mode


@contextmanager
def _inference_errors(path: Path) -> Iterator[None]:
    """A runtime failure is about this model, not the caller's code: one :class:`ModelError` naming it."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: inference failed ({first_line(exc)})") from None


class Predictor:
    """A loaded model plus its metadata. Create with :meth:`Predictor.load`. Its scores are calibrated: the
    model's probabilities at the metadata's temperature (:mod:`cvkeras.serving.calibration`); a model exported
    with an unknown detector (:mod:`cvkeras.serving.unknown`) also says per image whether it is ``unknown``."""

    def __init__(self, runner: Runner, metadata: ModelMetadata, path: Path,
                 decode_workers: int | None = None, mode: str = "auto",
                 make_runner: Callable[[str], Runner] | None = None) -> None:
        self.metadata = metadata
        self.path = path
        self.mode = check_mode(mode)
        self.decode_workers = decode_workers if decode_workers is not None else default_workers()
        #: the metadata's unknown detector (None: every image gets a class and no unknown verdict)
        self.unknown = None if metadata.unknown is None else UnknownDetector.from_dict(metadata.unknown,
                                                                                       len(metadata.labels))
        #: Decode large JPEGs DCT-scaled: the contract of models exported with that rule (not older ones).
        self.jpeg_scaling = metadata.preprocess.get("jpeg_scaling") == JPEG_SCALING
        first = "throughput" if mode == "throughput" else "latency"
        self._runners: dict[str, Runner] = {first: runner}
        self._make_runner = make_runner
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread input buffer of the single-image path

    @classmethod
    def load(cls, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None,
             decode_workers: int | None = None, mode: str = "auto") -> Predictor:
        """Load an ``.onnx`` (ONNX Runtime) or ``.tflite`` (LiteRT) model and its cvkeras metadata.

        Args:
            providers: ONNX Runtime execution providers, default ``["CPUExecutionProvider"]``.
            threads: intra-op threads of the runtime (default: the runtime's choice).
            decode_workers: threads decoding images while the model runs, in throughput use (default:
                up to 2; 0 decodes inline). Latency use always decodes inline.
            mode: ``"latency"``, ``"throughput"`` or ``"auto"`` (see :data:`MODES` and the module doc).

        Raises:
            ModelError: missing, truncated or non-model file, or a graph that is not a cvkeras classifier.
            MetadataError: the model carries no (or broken) cvkeras metadata.
            ValueError: unknown ``mode``.
        """
        check_mode(mode)
        p = Path(path)
        if not p.is_file():
            raise ModelError(not_a_model_hint(p))
        if p.suffix == ".onnx":
            def make_runner(use: str) -> Runner:
                return OnnxRunner(p, providers, threads, spinning=use == "latency")
        elif p.suffix == ".tflite":
            def make_runner(use: str) -> Runner:
                return TFLiteRunner(p, threads)
        elif p.suffix in (".keras", ".h5"):
            run = p.parent
            raise ModelError(f"{p}: a Keras model; devices run the exported one: `cvkeras export {run}` writes "
                             f"{run / 'export' / 'model.onnx'} (and .tflite), pass that")
        else:
            raise ModelError(f"{p}: unknown model type {quote(p.suffix)}; pass an .onnx or .tflite file")
        runner = make_runner("throughput" if mode == "throughput" else "latency")
        meta = runner.metadata()
        h, w = meta.input_size
        if any(m is not None and m != want for m, want in zip(runner.hw, (h, w), strict=True)):
            raise MetadataError(f"{p}: metadata says input {h}x{w} but the model takes "
                                f"{runner.hw[0]}x{runner.hw[1]}; re-export the model")
        if runner.num_classes is not None and runner.num_classes != len(meta.labels):
            raise MetadataError(f"{p}: metadata has {len(meta.labels)} labels but the model outputs "
                                f"{runner.num_classes} classes; re-export the model")
        if meta.unknown is not None and runner.features_dim != (dim := meta.unknown["shape"][1]):
            have = "has none" if runner.features_dim is None else f"gives {runner.features_dim} values"
            raise MetadataError(f"{p}: metadata's unknown detector needs a {dim}-value {FEATURES_NAME!r} output, "
                                f"the model {have}; re-export the model")
        if meta.failed_check:
            warnings.warn(failed_model_line(p, meta.failed_check), FailedModelWarning, stacklevel=2)
        return cls(runner, meta, p, decode_workers, mode,
                   make_runner if p.suffix == ".onnx" else None)  # LiteRT: one interpreter serves both

    def _runner_for(self, use: str) -> Runner:
        """The runner for ``use`` ("latency" or "throughput"); in auto mode made on first use."""
        if self.mode != "auto":
            use = self.mode
        runner = self._runners.get(use)
        if runner is None:
            if self._make_runner is None:
                return next(iter(self._runners.values()))
            with self._lock:
                runner = self._runners.get(use)
                if runner is None:
                    runner = self._runners[use] = self._make_runner(use)
        return runner

    @property
    def _runner(self) -> Runner:
        """The runner of this predictor's mode (auto: the latency one, made at load)."""
        return self._runner_for("throughput" if self.mode == "throughput" else "latency")

    # --- properties ------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.metadata.input_size

    @property
    def kind(self) -> str:
        """``"onnx"`` or ``"tflite"``."""
        return self._runner.kind

    @property
    def temperature(self) -> float:
        """The metadata's temperature: every score this predictor returns is ``softmax(log p / T)``."""
        return self.metadata.temperature

    @property
    def providers(self) -> list[str]:
        return list(self._runner.providers)

    def __repr__(self) -> str:
        return (f"Predictor({str(self.path)!r}, {self.kind}, {len(self.labels)} classes, "
                f"input {self.input_size[0]}x{self.input_size[1]}, {self.metadata.precision}, {self.mode})")

    # --- raw runner ------------------------------------------------------------------------------------
    def predict_batch(self, x: np.ndarray, use: str | None = None, raw: bool = False) -> np.ndarray:
        """Calibrated probabilities ``(N, C)`` float32 for a float32 NHWC batch (see :meth:`predict_arrays`)."""
        return self.predict_arrays(x, use, raw)[0]

    def predict_arrays(self, x: np.ndarray, use: str | None = None,
                       raw: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities ``(N, C)`` float32 for a float32 NHWC batch in ``0..255`` at the input size,
        and each image's ``unknown_score`` (None without an unknown detector).

        Splits into the model's fixed batch when it has one (TFLite: 1). Integer TFLite I/O is quantized
        and dequantized with the tensors' own scale and zero point. ``use`` ("latency"/"throughput")
        picks the session in auto mode; default: latency for one image, throughput for more. ``raw``: the
        model's own output, before the metadata's temperature (what ``reference.npz`` is compared with).
        """
        x = np.asarray(x)
        h, w = self.input_size
        if x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise OptionError(f"expected a float32 batch of shape (N, {h}, {w}, 3), got {x.shape}; "
                             "preprocess with cvkeras.serving.preprocess.to_model_input")
        x = np.ascontiguousarray(x, dtype=np.float32)
        runner = self._runner_for(use or ("latency" if x.shape[0] == 1 else "throughput"))
        step = runner.batch or max(1, x.shape[0])
        with _inference_errors(self.path):
            parts = [self._run(runner, x[i : i + step]) for i in range(0, x.shape[0], step)]
        if not parts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), None
        probs = np.concatenate([p for p, _ in parts]).astype(np.float32, copy=False).reshape(x.shape[0], -1)
        scores = None if self.unknown is None else np.concatenate([s for _, s in parts])
        return (probs if raw else apply_temperature(probs, self.temperature)), scores

    def _run(self, runner: Runner, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's probabilities and, with an unknown detector, the unknown scores of batch ``x``."""
        if self.unknown is None:
            return runner.run(x), None
        probs, feats = runner.run_features(x)  # type: ignore[union-attr]  # load checked the features output
        return probs, self.unknown.scores(feats)

    # --- decoding --------------------------------------------------------------------------------------
    def batches(self, sources: Sequence[ImageInput], batch_size: int = 16,
                overlap: bool | None = None) -> Iterator[Batch]:
        """Decode and resize ``sources`` into model-ready batches, in order.

        With ``overlap`` (default: unless this is a latency-mode predictor) ``decode_workers`` threads
        decode one batch ahead, writing straight into each batch's float32 buffer, so the thread running
        the model only waits; without, decoding is inline. Unreadable sources are reported in
        ``Batch.errors`` instead of raising, so one bad file never stops the rest.
        """
        if overlap is None:
            overlap = self.mode != "latency"
        return decode_batches(sources, self.input_size, batch_size, self.jpeg_scaling, self.decode_workers, overlap)

    # --- prediction ------------------------------------------------------------------------------------
    def _result(self, probs: np.ndarray, top_k: int, path: str | None, unknown_score: float | None = None
                ) -> Prediction:
        pred = ranked(probs, self.labels, top_k, path)
        if unknown_score is not None and self.unknown is not None:
            pred.unknown_score = float(unknown_score)
            pred.unknown = pred.unknown_score > self.unknown.threshold
        return pred

    def iter_predict(self, images: Sequence[ImageInput], top_k: int = 5,
                     batch_size: int = 16) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per source, in order, as batches finish (streams big folders).

        Throughput settings (decoding overlapped with inference) unless the predictor is in latency mode.
        """
        use = "latency" if self.mode == "latency" else "throughput"
        for batch in self.batches(images, batch_size, overlap=use == "throughput"):
            probs, scores = self.predict_arrays(batch.x, use) if batch.indices else (None, None)
            rows = dict(zip(batch.indices, range(len(batch.indices)), strict=True))
            for i in sorted([*batch.indices, *batch.errors]):
                name = source_name(images[i])
                if i in batch.errors:
                    yield Prediction(None, -1, float("nan"), path=name, error=batch.errors[i])
                else:
                    yield self._result(probs[rows[i]], top_k, name, None if scores is None else scores[rows[i]])

    @overload
    def predict(self, images: str | os.PathLike | bytes | Image.Image, top_k: int = ...,
                batch_size: int = ...) -> Prediction: ...
    @overload
    def predict(self, images: Sequence[ImageInput] | np.ndarray, top_k: int = ...,
                batch_size: int = ...) -> list[Prediction] | Prediction: ...

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5,
                batch_size: int = 16) -> Prediction | list[Prediction]:
        """Classify one image or many.

        A single path, bytes, PIL image or HWC array returns one :class:`Prediction` and raises
        :class:`ImageError` when it cannot be read. A list (or an NHWC uint8 array) returns a list in
        the same order, where unreadable items carry ``error`` instead of raising.
        """
        if is_single(images):
            return self._predict_one(images, top_k)  # type: ignore[arg-type]
        seq = list(images) if not isinstance(images, np.ndarray) else [img for img in images]
        return list(self.iter_predict(seq, top_k, batch_size))

    def _predict_one(self, image: ImageInput, top_k: int) -> Prediction:
        """The single-image path: latency settings, inline decode into a preallocated per-thread input."""
        runner = self._runner_for("latency")
        arr = load_resized(image, self.input_size, self.jpeg_scaling)  # raises ImageError
        scores = None
        with _inference_errors(self.path):
            if isinstance(runner, TFLiteRunner) and runner.takes_uint8_image:
                probs, feats = runner.run_uint8(arr, self.unknown is not None)
                scores = None if self.unknown is None else self.unknown.scores(feats)
            else:
                x = getattr(self._local, "x", None)
                if x is None:
                    x = self._local.x = np.empty((1, *self.input_size, 3), dtype=np.float32)
                x[0] = arr
                probs, scores = self._run(runner, x)
        probs = apply_temperature(np.asarray(probs, dtype=np.float32).reshape(-1), self.temperature)
        return self._result(probs, top_k, source_name(image), None if scores is None else scores[0])
