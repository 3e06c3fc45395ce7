"""The unknown detector at export (:mod:`cvkeras.serving.unknown`): the Keras model's pooled features, the
prototypes fitted on training images, the threshold chosen on the validation images, and the figures the
export report gives (acceptance, and with ``--ood`` the AUROC and false-accept rate on foreign photos).

Roles of the images (``cvkeras.export.fidelity``): the prototypes are fitted on the held-back training images
(the training images int8 is not calibrated on); the threshold is the ``accept`` quantile of the validation
images' scores -- nothing is fitted on them, so their acceptance is what a device sees on new in-class photos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvkeras.export.errors import ExportError
from cvkeras.serving.unknown import SCORE, UnknownDetector, ood_figures


def keras_outputs(model, images: np.ndarray, features: bool, chunk: int = 256
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Keras probabilities of uint8 ``images`` and, with ``features``, the classifier head's input (the pooled
    features the exported ``features`` output gives), a chunk at a time (bounded memory)."""
    if features:
        import keras

        model = keras.Model(model.inputs, [model.outputs[0], model.layers[-1].input])
    probs, feats = [], []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].astype(np.float32)
        n = len(x)  # every batch full (the last one zero-padded): one traced predict step, not one per shape
        x = np.concatenate([x, np.zeros((-n % 32, *x.shape[1:]), np.float32)]) if n % 32 else x
        out = model.predict(x, batch_size=32, verbose=0)
        probs.append((out[0] if features else out)[:n])
        feats += [out[1][:n]] if features else []
    p = np.concatenate(probs).astype(np.float32)
    return p, (np.concatenate(feats).reshape(len(p), -1).astype(np.float32) if features else None)


def fit(feats: np.ndarray, labels: np.ndarray, val: np.ndarray, held: np.ndarray, num_classes: int,
        accept: float) -> UnknownDetector:
    """Prototypes from the held-back training rows, threshold from the validation rows."""
    if not held.any():
        raise ExportError("no held-back training image to fit the unknown detector's prototypes on; lower "
                          "--calibration-samples or pass --unknown off")
    return UnknownDetector.fit(feats[held], labels[held], feats[val], num_classes, accept)


def ood_scores(model, folder: str | os.PathLike, files: list[str], size: tuple[int, int],
               detector: UnknownDetector) -> np.ndarray:
    """The Keras model's unknown scores of the photos ``files`` under ``folder`` (``--ood``), decoded as on the
    device."""
    from cvkeras.export.fidelity import decode

    images, _, _ = decode(files, size)
    if not len(images):
        raise ExportError(f"{folder}: --ood has no readable images; pass a folder of photos of none of the classes")
    return detector.scores(keras_outputs(model, images, True)[1])


def report_block(detector: UnknownDetector, val_scores: np.ndarray, n_held: int,
                 ood: np.ndarray | None, formats: Sequence[str]) -> dict[str, Any]:
    """The ``unknown`` block of ``export_report.json``: the detector, the ``formats`` whose artifacts carry
    it (every exported one), where it was fitted and chosen, the Keras model's acceptance on the validation
    images and, with ``--ood``, its figures on foreign photos."""
    return {"score": SCORE, "formats": list(formats), "accept_target": detector.accept, "threshold": detector.threshold,
            "features": detector.dim, "prototypes_from": {"images": "held-back training", "n": int(n_held)},
            "chosen_on": {"images": "validation", "n": int(len(val_scores))},
            "keras_accept_rate": float((val_scores <= detector.threshold).mean()),
            "ood": None if ood is None else ood_figures(val_scores, ood, detector.threshold)}
