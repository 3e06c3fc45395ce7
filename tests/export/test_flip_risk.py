"""The repair's predicted validation agreement (cvkeras.export.flip_risk): held-back margin erosions applied to
the float model's validation margins."""

from __future__ import annotations

import numpy as np

from cvkeras.export.flip_risk import erosions, flip_chances, margins, pass_chance, predicted_agreement


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_erosion_is_the_shrinking_of_the_float_top1_over_top2_log_margin() -> None:
    f = _softmax(np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]]))
    q = _softmax(np.array([[2.0, 1.5, 0.0], [0.0, 2.5, 1.5]]))
    np.testing.assert_allclose(margins(f), [2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(erosions(f, q), [2.0 - 0.5, 0.5 - 1.0], atol=1e-6)  # the second margin grew


def test_prediction_matches_the_flips_of_noise_like_the_measured_one() -> None:
    """Wide-margin 'seen' images never flip under the noise, yet the prediction for narrow-margin images
    is their real flip rate under the same noise: what a raw held-back agreement cannot tell."""
    rng = np.random.default_rng(0)
    noise = lambda n: rng.normal(0, 0.3, (n, 2))  # noqa: E731 -- the candidate's logit noise
    seen = np.stack([np.full(4000, 6.0), np.zeros(4000)], 1)  # margins of 6: never flip
    target = np.stack([rng.uniform(0, 1.5, 4000), np.zeros(4000)], 1)
    f_seen, q_seen = _softmax(seen), _softmax(seen + noise(4000))
    assert np.all(q_seen.argmax(1) == f_seen.argmax(1))
    actual = np.mean(_softmax(target + noise(4000)).argmax(1) == 0)
    predicted = predicted_agreement(flip_chances(f_seen, q_seen, _softmax(target)))
    assert abs(predicted - actual) < 0.02 and predicted < 0.97, (predicted, actual)
    assert predicted_agreement(flip_chances(f_seen, f_seen, _softmax(target))) == 1.0  # no erosion: nothing flips
    assert predicted_agreement(flip_chances(f_seen[:0], q_seen[:0], _softmax(target))) == 1.0  # nothing measured


def test_pass_chance_is_the_chance_of_no_more_flips_than_the_gate_allows() -> None:
    assert pass_chance(np.zeros(18), 0.99) == 1.0
    np.testing.assert_allclose(pass_chance(np.full(18, 0.01), 0.99), 0.99 ** 18)  # 18 images: no flip allowed
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.02, 300)  # 300 images: three flips allowed
    simulated = np.mean((rng.random((20000, 300)) < p).sum(1) <= 3)
    assert abs(pass_chance(p, 0.99) - simulated) < 0.01
