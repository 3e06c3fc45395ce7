"""Repair an int8 model that misses its gate: keep the fewest layers in float32 until the gate holds.

1. Measure each layer's quantization error on calibration images (never on the fidelity images the gate
   is decided on), per format: ``cvkeras.export.onnx.ranking`` (onnxruntime's ``qdq_loss_debug``),
   ``cvkeras.export.tflite.debugger`` (TensorFlow's QuantizationDebugger) and
   ``cvkeras.export.tflite.dynamic_repair`` (the weights' output error, for the dynamic-range model).

2. Rank layers by that error, worst first, and keep the top ``k`` in float: ``k`` doubles (1, 2, 4 ...)
   until the candidate holds, then a bisection finds the smallest holding ``k`` (:func:`search`). Candidates
   are run on the held-back training images only, never on the validation images: a candidate holds when its
   top-1 agreement there reaches ``ExportOptions.search_agreement()`` and its chance to pass the validation
   gate, predicted from its margin erosions there applied to the float model's validation margins
   (:mod:`cvkeras.export.flip_risk`: held-back images alone almost never flip), is at least ``PASS_CHANCE``.
   The search's choice is then judged once, from its files, on validation, like any artifact. The outcome is
   not monotone in ``k`` (a flip more or less is noise), so a search that looked at the validation images
   would ship its luckiest draw; ``attempts`` lists every candidate tried.

3. :func:`repair_artifact` runs that loop for any format through a :class:`CandidateFiles` adapter (how a
   candidate is written next to the artifact, how the passing one replaces it, how a candidate is removed)
   and records the outcome in the artifact's row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cvkeras.export.errors import ExportError
from cvkeras.export.verify import ArtifactResult

#: Calibration images the layer errors are measured on.
DEBUG_IMAGES = 16
#: What the search's candidates are checked on (``RepairResult.to_dict``'s ``searched_on``).
SEARCH_IMAGES = "held_back_train"
#: Keys of an artifact's metadata that describe the fitting of the model in the file (a candidate has its own).
FITTING_KEYS = ("gptq", "bias_correction")


@dataclass
class LayerError:
    """One layer's measured quantization error (``noise``: noise-to-signal power, or rmse/scale)."""

    name: str
    op: str
    error: float
    metric: str
    #: every node to keep in float with this layer: an ONNX Conv takes its fused Relu/Clip along (left
    #: quantized alone, the activation would be quantized over the conv's unbounded output range)
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Attempt:
    """One candidate of the search, as measured on the held-back training images."""

    float_layers: int
    agreement: float | None
    accuracy_drop: float | None
    passed: bool
    size_bytes: int
    latency_ms_per_image: float
    n_images: int = 0
    predicted_agreement: float | None = None  # on validation, from the held-back erosions (flip_risk)
    pass_chance: float | None = None  # of the validation gate, from the same


@dataclass
class RepairResult:
    """What the search did: the float layers of the artifact it kept, and every candidate it tried."""

    passed: bool
    float_layers: list[str] = field(default_factory=list)
    ranking: list[LayerError] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "float_layers": self.float_layers, "searched_on": SEARCH_IMAGES,
                "ranking": [r.to_dict() for r in self.ranking[:20]],
                "attempts": [asdict(a) for a in self.attempts]}


def search(ranking: Sequence[LayerError], build: Callable[[list[str]], None],
           check: Callable[[], tuple[bool, dict[str, Any]]], say: Callable[[str], None]) -> RepairResult:
    """Smallest ``k`` such that the model with the ``k`` worst layers in float passes ``check``.

    ``build(names)`` writes the candidate with those layers (``LayerError.name``) in float; ``check()`` returns (passed,
    figures with ``agreement``, ``accuracy_drop`` (a fraction), ``size_bytes``, ``latency_ms_per_image``).
    The candidate left built at the end is the smallest passing one, or the full-float-layers one when none passes.
    """
    names = [r.name for r in ranking]
    result = RepairResult(passed=False, ranking=list(ranking))
    outcome: dict[int, bool] = {}
    built: list[int] = []

    def attempt(k: int) -> bool:
        build(names[:k])
        built.append(k)
        ok, fig = check()
        predicted = fig.get("predicted_agreement")
        say(f"  {k} layer(s) in float: agreement {100 * (fig.get('agreement') or 0):.2f} % on "
            f"{fig.get('n_reference', 0)} held-back training images"
            + ("" if predicted is None else f"; predicted on validation {100 * predicted:.2f} %, "
                                            f"{100 * fig.get('pass_chance', 0):.0f} % chance to pass")
            + f" -> {'holds' if ok else 'not yet'}")
        result.attempts.append(Attempt(k, fig.get("agreement"), fig.get("accuracy_drop"), ok,
                                       int(fig.get("size_bytes") or 0), float(fig.get("latency_ms_per_image") or 0.0),
                                       int(fig.get("n_reference") or 0), predicted, fig.get("pass_chance")))
        outcome[k] = ok
        return ok

    lo, hi, k = 0, None, 1
    while k < len(names):
        if attempt(k):
            hi = k
            break
        lo, k = k, 2 * k
    if hi is None:
        if not names or not attempt(len(names)):
            return result
        hi = len(names)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    if built[-1] != hi:
        build(names[:hi])
    result.passed = True
    result.float_layers = names[:hi]
    return result


@dataclass(frozen=True)
class CandidateFiles:
    """How one format writes repair candidates (the format adapter of :func:`repair_artifact`).

    ``suffix``: the artifact's file suffix (``.onnx``). ``write(layers, path)``: writes the candidate with
    ``layers`` in float at ``path``, metadata included, and returns what fitting it did (GPTQ, bias correction).
    ``adopt(path, extra)``: the passing candidate at ``path`` replaces the artifact, with metadata ``extra``.
    ``remove(path)``: deletes a candidate (and whatever goes with it).
    """

    suffix: str
    write: Callable[[list[LayerError], str], dict[str, Any]]
    adopt: Callable[[str, dict[str, Any]], None]
    remove: Callable[[str], None]


def repair_artifact(res: ArtifactResult, measuring: str, rank: Callable[[], list[LayerError]],
                    files: CandidateFiles, extra: dict[str, Any], fast_check: Callable[[str], tuple[bool, dict]],
                    check: Callable[[ArtifactResult], Any], say: Callable[[str], None]) -> None:
    """Keep the fewest worst-ranked layers of ``res`` in float until its gate holds (:func:`search` over
    candidates written next to the artifact); the passing one replaces it and is checked like any artifact.

    ``measuring``: what :func:`rank` measures (for the console). ``extra``: the full model's metadata extras
    (the candidate's own fitting replaces :data:`FITTING_KEYS`). An ExportError on the way lands in
    ``res.repair["error"]``; otherwise the outcome is recorded (:func:`record_repair`).
    """
    full = res.to_dict()
    say(f"{res.error}; measuring {measuring}")
    candidate = res.path[: -len(files.suffix)] + ".candidate" + files.suffix
    built: dict[str, Any] = {}  # what GPTQ and bias correction did to the candidate in the file now
    try:
        try:
            ranking = rank()
            by_name = {r.name: r for r in ranking}

            def build(names: list[str]) -> None:
                rounding = files.write([by_name[n] for n in names], candidate)
                built.clear()
                built.update(rounding)

            outcome = search(ranking, build, lambda: fast_check(candidate), say)
            if outcome.passed:
                kept = {k: v for k, v in extra.items() if k not in FITTING_KEYS}  # the full model's
                files.adopt(candidate, {**kept, **built, "float_layers": outcome.float_layers})
                check(res)
        finally:
            files.remove(candidate)
    except ExportError as exc:
        res.repair = {"error": str(exc)}
        return
    record_repair(res, full, outcome)


def record_repair(res: ArtifactResult, full: dict[str, Any], outcome: RepairResult) -> None:
    """The repair's outcome in the artifact row: layers kept float, what it cost, every candidate tried."""
    doc = outcome.to_dict()
    doc["full_int8"] = {k: full.get(k) for k in ("agreement", "agreement_ci", "accuracy_drop", "accuracy_drop_ci",
                                                   "size_bytes", "latency_ms_per_image", "error")}
    if outcome.passed and res.size_bytes and full.get("size_bytes"):
        doc["size_cost"] = round(res.size_bytes / full["size_bytes"], 4)
        if full.get("latency_ms_per_image") and res.latency_ms_per_image:
            doc["latency_cost"] = round(res.latency_ms_per_image / full["latency_ms_per_image"], 4)
    res.float_layers = outcome.float_layers if outcome.passed else None
    if outcome.passed:  # the search's choice, judged once on the validation images like any artifact
        doc["judged_on"] = {"images": "validation", "n": res.n_reference, "agreement": res.agreement,
                            "accuracy_drop": res.to_dict().get("accuracy_drop"), "passed": res.ok}
    res.repair = doc
    if not outcome.passed:
        best = max((a.pass_chance or 0.0 for a in outcome.attempts), default=0.0)
        res.error = (f"{full.get('error')}; no mix of int8 and float layers passes (tried "
                     f"{', '.join(str(a.float_layers) for a in outcome.attempts)} layer(s) in float on the "
                     f"held-back training images; best predicted chance to pass on validation {100 * best:.0f} %); "
                     "the float32 and --fp16 files are the checked alternatives")
