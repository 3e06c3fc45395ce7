"""The 95 % intervals behind every agreement and accuracy-drop figure (``cvkeras validate`` and export)."""

from __future__ import annotations

import numpy as np

#: Two-sided 95 % normal quantile of the intervals below.
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (fractions); sane at 0 % and 100 % unlike Wald."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, float(mid - half)), min(1.0, float(mid + half)))


def paired_drop_interval(ref_correct: np.ndarray, model_correct: np.ndarray,
                         z: float = Z95) -> tuple[float, float]:
    """95 % interval of the paired accuracy difference ``mean(ref_correct) - mean(model_correct)``.

    The images are the same for both models, so only discordant pairs carry information (McNemar):
    ``b`` = reference right and model wrong, ``c`` = the reverse. Agresti & Min's (2005) Wald interval
    with half a count added to each of the four cells keeps a non-zero width when ``b = c = 0``.
    Returned as fractions (multiply by 100 for points).
    """
    a, m = np.asarray(ref_correct, bool), np.asarray(model_correct, bool)
    n = len(a)
    if n == 0:
        return (-1.0, 1.0)
    b, c = int((a & ~m).sum()), int((~a & m).sum())
    nn = n + 2.0
    p10, p01 = (b + 0.5) / nn, (c + 0.5) / nn
    diff = p10 - p01
    half = z * np.sqrt(max(p10 + p01 - diff * diff, 0.0) / nn)
    return (max(-1.0, float(diff - half)), min(1.0, float(diff + half)))
