"""What ``cvkeras validate`` (and each export check) reports: :class:`ValidationReport`, its JSON and its two
gates (the accuracy drop and the top-1 agreement with the reference). Standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ValidationReport:
    """Accuracy of an artifact and its parity with the reference. Accuracies and agreement are fractions
    0..1; ``accuracy_drop`` and its interval are in percentage points (reference minus artifact), and
    fractions in :meth:`to_dict` (the JSON).

    With a reference, agreement, differences and drop are computed on the ``n_reference`` images matched
    with its validation rows (the drop paired image by image, ``n_paired`` = ``n_reference``); images matched
    with held-back training rows give ``held_back_agreement`` apart. ``accuracy`` and ``per_class`` are over
    the ``n`` images no training saw (validation rows and images the reference does not know); the ``n_seen``
    images training saw are counted apart (``seen_accuracy``). ``measured_on``: figure -> images and count.
    """

    model: str
    n: int
    accuracy: float
    reference_accuracy: float | None
    accuracy_drop: float | None
    max_accuracy_drop: float
    passed: bool
    agreement: float | None = None  # top-1 agreement with the reference outputs
    max_abs_diff: float | None = None  # largest |p - p_ref| over all classes and images
    mean_abs_diff: float | None = None
    n_reference: int = 0  # images matched with a reference output (agreement is over these)
    reference_source: str | None = None  # where reference_accuracy came from
    min_agreement: float = 0.0
    agreement_ci: list[float] | None = None  # Wilson 95 % interval, fractions
    n_paired: int = 0  # matched labelled images the drop is computed on
    paired_accuracy: float | None = None  # the model's accuracy on those images
    accuracy_drop_ci: list[float] | None = None  # paired 95 % interval, points
    discordant: list[int] | None = None  # [reference right & model wrong, reference wrong & model right]
    gate_failures: list[str] = field(default_factory=list)  # which gate failed and by how much
    per_class: dict[str, float] = field(default_factory=dict)  # accuracy per class present in the data
    support: dict[str, int] = field(default_factory=dict)
    latency_ms_per_image: float = 0.0  # mean model time per image (decoding excluded)
    failures: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"} per unreadable file
    held_back_agreement: float | None = None  # agreement on held-back training rows (reported, never gated)
    held_back_agreement_ci: list[float] | None = None
    n_held_back: int = 0
    n_seen: int = 0  # images training saw (held-back rows, calibration, other training images): apart
    seen_accuracy: float | None = None
    measured_on: dict[str, dict[str, Any]] = field(default_factory=dict)  # figure -> {"images", "n"}
    temperature: float = 1.0  # the model metadata's: the scores are softmax(log p / temperature)
    ece: float | None = None  # expected calibration error of those scores over the ``n`` images (15 bins)
    nll: float | None = None  # their mean negative log-likelihood (nats)
    #: the unknown detector's figures (acceptance, agreement with Keras, ``ood``); None: the model has none
    unknown: dict[str, Any] | None = None
    #: the model's raw probabilities (before the temperature) per readable image, in ``items`` order; not in
    #: the JSON (export's repair search reads them instead of running a candidate twice)
    probs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``validate --json`` (``cvkeras.validation/2``, docs/json.md): the drop, its interval
        and its gate as fractions, like every other proportion there."""
        from cvkeras.serving.schema import points_to_fraction, schema_id

        d = {"schema": schema_id("validation"), **asdict(replace(self, probs=None))}
        del d["probs"]
        for key in ("accuracy_drop", "accuracy_drop_ci", "max_accuracy_drop"):
            d[key] = points_to_fraction(d[key])
        return d

    def apply_gates(self) -> None:
        """Set ``passed`` and, per failed gate, one phrase in ``gate_failures`` saying by how much it failed."""
        fails = []
        if self.accuracy_drop is not None and self.accuracy_drop > self.max_accuracy_drop + 1e-9:
            ci = self.accuracy_drop_ci
            fails.append(f"accuracy drop {self.accuracy_drop:.2f} points"
                         + (f" (95 % CI {ci[0]:+.2f}..{ci[1]:+.2f})" if ci else "")
                         + f" > {self.max_accuracy_drop:g} allowed, "
                         f"by {self.accuracy_drop - self.max_accuracy_drop:.2f}")
        if self.agreement is not None and self.agreement < self.min_agreement - 1e-12:
            ci = self.agreement_ci
            fails.append(f"top-1 agreement {100 * self.agreement:.2f} %"
                         + (f" (95 % CI {100 * ci[0]:.2f}..{100 * ci[1]:.2f})" if ci else "")
                         + f" on {self.n_reference} images < {100 * self.min_agreement:g} % required, "
                         f"by {100 * (self.min_agreement - self.agreement):.2f} points")
        self.gate_failures = fails
        self.passed = not fails
