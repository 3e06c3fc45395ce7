"""How an evaluated set of images meets the reference outputs of ``reference.npz``: which row each image
matches and in what role (validation, held-back training, other training, unknown), and the figures on the
matched rows -- agreement, probability differences, the paired accuracy drop and their 95 % intervals.
The gated figures are on validation rows only; held-back training rows are reported apart, never pooled.
"""

from __future__ import annotations

import numpy as np

from cvkeras.serving.errors import quote
from cvkeras.serving.reference import VAL, PathIndex, Reference, ValidationError
from cvkeras.serving.stats import paired_drop_interval, wilson_interval
from cvkeras.serving.validation_report import ValidationReport

#: Roles of an evaluated image: a validation row of the reference, a held-back training row, another image
#: training saw (calibration or not held back), or an image the reference does not know.
VAL_ROLE, HELD_BACK_ROLE, SEEN, NEW = "validation", "held_back_train", "seen", "new"
#: What the headline accuracy is measured on, by the roles of the images no training saw.
HEADLINE = {frozenset({VAL_ROLE}): "validation", frozenset({NEW}): "given images (not in the reference)",
            frozenset({VAL_ROLE, NEW}): "validation + given images not in the reference"}


def match_reference(ref: Reference | None, keys: list[str] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference row (-1: none) and role of each evaluated image.

    Files match rows by their recorded relative path (:class:`cvkeras.serving.reference.PathIndex`), arrays by
    position. Two images matching one row is an error: the reference could not tell them apart.
    """
    rows = np.full(n, -1, np.int64)
    roles = np.full(n, NEW, dtype=object)
    if ref is None:
        return rows, roles
    if keys is None or ref.paths is None:  # match by position
        if len(ref.probs) != n:
            raise ValidationError(f"{ref.source}: {len(ref.probs)} reference outputs for {n} "
                                  "images; pass the images the reference was computed on")
        rows = np.arange(n)
    else:
        index = PathIndex(ref.paths)
        found = [index.find(k) for k in keys]
        rows = np.asarray([-1 if r is None else r for r in found], np.int64)
        hit = np.flatnonzero(rows >= 0)
        first: dict[int, int] = {}
        for i in hit:
            j = first.setdefault(int(rows[i]), int(i))
            if j != i:
                raise ValidationError(f"{ref.source}: {keys[j]} and {keys[i]} both match the reference image "
                                      f"{quote(ref.paths[rows[i]])}; pass one copy of the data")
        trained = PathIndex([*ref.calibration, *ref.seen])
        for i in np.flatnonzero(rows < 0):
            if keys[i] in trained:
                roles[i] = SEEN
    matched = rows >= 0
    splits = ref.row_splits()
    roles[matched] = np.where(splits[rows[matched]] == VAL, VAL_ROLE, HELD_BACK_ROLE)
    return rows, roles


def _agreement(probs: np.ndarray, ref_probs: np.ndarray) -> tuple[float, list[float]]:
    """Top-1 agreement of two sets of outputs for the same images, with its Wilson 95 % interval."""
    same = probs.argmax(1) == ref_probs.argmax(1)
    return float(same.mean()), list(wilson_interval(int(same.sum()), len(same)))


def compare_with_reference(report: ValidationReport, ref: Reference, probs: np.ndarray, labels: np.ndarray,
                           rows: np.ndarray, roles: np.ndarray, num_classes: int) -> None:
    """Agreement, differences, drop and their intervals on the validation rows; held-back rows apart."""
    if ref.probs.ndim != 2 or ref.probs.shape[1] != num_classes:
        raise ValidationError(f"{ref.source}: reference has {ref.probs.shape[-1]} classes, the model "
                              f"{num_classes}; pass the reference exported with this model")
    val, held = roles == VAL_ROLE, roles == HELD_BACK_ROLE
    if not (val.any() or held.any()):
        raise ValidationError(f"{ref.source}: none of the {len(probs)} images is in the reference; pass the "
                              "data the model was exported from, or another --reference")
    if held.any():
        report.n_held_back = int(held.sum())
        report.held_back_agreement, report.held_back_agreement_ci = _agreement(probs[held], ref.probs[rows[held]])
        report.measured_on["held_back_agreement"] = {"images": "held-back training (seen in training; not gated)",
                                                     "n": report.n_held_back}
    if not val.any():
        raise ValidationError(f"{ref.source}: none of the {len(probs)} images is a validation image of the "
                              f"reference ({int(held.sum())} are held-back training images, which training saw); "
                              "pass the validation data (--run RUN, or --data with the validation folder)")
    p, q, y = probs[val], ref.probs[rows[val]], labels[val]
    diff = np.abs(p - q)
    report.n_reference = report.n_paired = int(val.sum())
    report.agreement, report.agreement_ci = _agreement(p, q)
    report.max_abs_diff = float(diff.max())
    report.mean_abs_diff = float(diff.mean())
    ref_ok, model_ok = q.argmax(1) == y, p.argmax(1) == y
    report.reference_accuracy = float(ref_ok.mean())
    report.paired_accuracy = float(model_ok.mean())
    report.accuracy_drop = 100.0 * (report.reference_accuracy - report.paired_accuracy)
    report.accuracy_drop_ci = [100.0 * v for v in paired_drop_interval(ref_ok, model_ok)]
    report.discordant = [int((ref_ok & ~model_ok).sum()), int((~ref_ok & model_ok).sum())]
    report.reference_source = f"reference outputs on the same {report.n_paired} validation images"
    for figure in ("agreement", "accuracy_drop", "max_abs_diff", "paired_accuracy"):
        report.measured_on[figure] = {"images": "validation", "n": report.n_reference}
