"""The unknown detector's numpy core (:mod:`cvkeras.serving.unknown`): score, threshold, AUROC, metadata block."""

from __future__ import annotations

import numpy as np
import pytest

from cvkeras.serving.unknown import UnknownDetector, auroc, ood_figures, threshold_for, unknown_problem


def test_auroc_counts_ties_half_and_orders_by_score():
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(1.0, size=200)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in b for y in a])
    assert auroc(a, b) == pytest.approx(brute)


def test_threshold_accepts_the_target_fraction_and_false_accept_counts_at_or_below():
    scores = np.linspace(0, 1, 101)
    t = threshold_for(scores, 0.95)
    assert np.mean(scores <= t) == pytest.approx(0.95, abs=0.01)
    assert ood_figures(scores, np.array([t, t + 0.1]), t)["false_accept"] == 0.5


def test_prototypes_are_unit_class_means_and_score_is_one_minus_best_cosine():
    train = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    det = UnknownDetector.fit(train, np.array([0, 0, 1]), np.array([[1.0, 0.1], [0.1, 1.0]]), 2, 0.95)
    np.testing.assert_allclose(det.prototypes, [[1, 0], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(det.scores(np.array([[1.0, 1.0], [5.0, 0.0], [0.0, 0.0]])),
                               [1 - 2 ** -0.5, 0.0, 1.0], atol=1e-6)  # all-zero features: as unlike as can be


def test_metadata_block_round_trips_and_names_what_is_wrong():
    det = UnknownDetector(np.eye(3, 4, dtype=np.float32), 0.25, 0.9)
    back = UnknownDetector.from_dict(det.to_dict(), 3)
    np.testing.assert_array_equal(back.prototypes, det.prototypes)
    assert (back.threshold, back.accept) == (0.25, 0.9)
    assert unknown_problem(det.to_dict(), 2) == "has 3 prototypes for 2 labels"
    assert "finite" in unknown_problem({**det.to_dict(), "threshold": float("nan")}, 3)
    assert "values, not 3 x 4" in unknown_problem({**det.to_dict(), "prototypes": "AAAA"}, 3)
    assert "score must be" in unknown_problem({**det.to_dict(), "score": "energy"}, 3)
