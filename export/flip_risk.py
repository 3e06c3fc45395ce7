"""Predicted top-1 agreement of an int8 candidate on the validation images, without running it on them.

Why: the repair must not choose on the images its verdict is measured on (issue #22), but the held-back
training images it may choose on are a blind proxy: the model fitted them, so their top-1/top-2 margins are
wide and they almost never flip (measured on the demo's flowers: 100 % held-back agreement for every
candidate while validation agreement was 97.3-99.0 %). What carries over from seen to unseen images is the
*quantization noise*: the erosion of the float model's top-1/top-2 log-probability margin is distributed
alike on held-back, validation and fresh photos (demo run, full int8: median/90th/99th percentile 0.06/0.43/
0.91 held-back, 0.04/0.44/0.84 validation, 0.06/0.42/0.83 on 1000 unshipped flower photos).

So a candidate's erosions on the held-back images, applied to the float model's margins on the validation
images (the float model's outputs, the same for every candidate), predict its validation agreement: image
``i`` flips when an erosion ``e >= margin_i``. Measured there: predicted 97.80 % against 97.33 % actual on
validation, 97.85 % against 98.90 % on the unshipped photos. The candidates' own outputs on the validation
images are never looked at, so the verdict measured on them afterwards is not a selection figure. The
repair takes a candidate when its chance to pass the validation gate under these flip chances is at least
:data:`PASS_CHANCE` (:func:`pass_chance`).
"""

from __future__ import annotations

import numpy as np

#: The chance to pass the validation gate a repair candidate needs (predicted from its held-back erosions).
PASS_CHANCE = 0.95
#: Probabilities are clipped here before the log (a saturated float32 softmax has exact zeros).
EPS = 1e-30


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0))


def margins(probs: np.ndarray) -> np.ndarray:
    """Log-probability margin of each row's top-1 over its top-2 class (0 for a single class)."""
    lp = np.sort(_log(probs), axis=1)
    return lp[:, -1] - lp[:, -2] if lp.shape[1] > 1 else np.zeros(len(lp))


def erosions(float_probs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """How much each image's float top-1/top-2 log margin shrank in ``probs`` (negative: it grew)."""
    f, q = _log(float_probs), _log(probs)
    order = np.argsort(-f, axis=1, kind="stable")
    r = np.arange(len(f))
    a, b = order[:, 0], order[:, 1]
    return (f[r, a] - f[r, b]) - (q[r, a] - q[r, b])


def flip_chances(float_seen: np.ndarray, probs_seen: np.ndarray, float_target: np.ndarray) -> np.ndarray:
    """Each target image's chance to flip when a candidate shrinks margins as it did on the images of
    ``float_seen`` (float outputs) / ``probs_seen`` (its outputs): the fraction of the measured erosions at
    least its float margin (``float_target``: the float model's outputs on the target images)."""
    float_target = np.asarray(float_target)
    if len(float_seen) == 0 or len(float_target) == 0 or float_target.shape[1] < 2:
        return np.zeros(len(float_target))
    e = np.sort(erosions(float_seen, probs_seen))
    return (len(e) - np.searchsorted(e, margins(float_target), side="left")) / len(e)


def predicted_agreement(chances: np.ndarray) -> float:
    """Top-1 agreement expected on the target images: 1 - the mean of their :func:`flip_chances` (1 for none)."""
    return float(1.0 - np.mean(chances)) if len(chances) else 1.0


def pass_chance(chances: np.ndarray, min_agreement: float) -> float:
    """Chance that independent flips with these ``chances`` keep top-1 agreement >= ``min_agreement`` on
    their images (Poisson-binomial: at most ``floor(n * (1 - min_agreement))`` flips). It asks what the
    verdict asks, at any set size: 18 images allow no flip, 300 allow three."""
    n = len(chances)
    allowed = int(np.floor(n * (1.0 - min_agreement) + 1e-9))
    dist = np.zeros(allowed + 1)  # P(exactly f flips so far), f <= allowed
    dist[0] = 1.0
    for p in np.clip(np.asarray(chances, dtype=np.float64), 0.0, 1.0):
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return float(dist.sum())
