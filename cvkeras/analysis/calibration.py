"""The ``calibration`` block of a run's metrics: the temperature fitted on the validation split, ECE and NLL
before and after it, and how the console and ``report.html`` show them (a reliability diagram).

The numbers come from :mod:`cvkeras.serving.calibration` (the device applies the same temperature). Protocol:
the temperature is FITTED on the validation split, so the "after" figures there are fitted figures (optimistic);
on the test split (``--test-split``) or another dataset (``evaluate --data``) nothing was fitted, so those are
the honest ones. ``metrics.json`` (the validation report) records the fitted temperature; export reads it through
:meth:`cvkeras.run.rundir.RunDir.temperature`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from cvkeras.serving.calibration import ECE_BINS, TEMPERATURE_RANGE, before_after, fit_temperature

#: ``measured_on.images`` of each block: which images, and whether the temperature was fitted on them.
IMAGES = {"val": "validation (the temperature was fitted on it: the after figures are fitted, optimistic)",
          "test": "test (nothing was fitted on it: the honest after figures)",
          None: "another dataset (--data; nothing was fitted on it)"}


def calibration_block(probs: np.ndarray, labels: np.ndarray, split: str | None,
                      temperature: float | None = None) -> dict[str, Any] | None:
    """The block of a metrics report: on the validation split (``split`` "val") the temperature is fitted on
    ``probs``; elsewhere the run's recorded ``temperature`` is applied (None: no block, nothing recorded)."""
    fitted = split == "val"
    if fitted:
        temperature = fit_temperature(probs, labels)
    if temperature is None or not len(labels):
        return None
    return {"temperature": float(temperature), "fitted": fitted, "bins": ECE_BINS,
            **before_after(probs, labels, temperature),
            "measured_on": {"images": IMAGES.get(split, IMAGES[None]), "n": int(len(labels))}}


def summary_line(metrics: dict[str, Any]) -> str | None:
    """One console line: the temperature, ECE and NLL before -> after on validation (fitted) and test."""
    cal = metrics.get("calibration")
    if not cal:
        return None

    def figures(block: dict[str, Any]) -> str:
        return (f"ECE {block['ece_before']:.3f} -> {block['ece_after']:.3f}, "
                f"NLL {block['nll_before']:.3f} -> {block['nll_after']:.3f}")

    t = cal["temperature"]
    edge = " (the edge of its range)" if any(abs(t / b - 1) < 1e-3 for b in TEMPERATURE_RANGE) else ""
    line = f"calibration  temperature {t:.3g}{edge}: val {figures(cal)} (fitted on val)"
    test = (metrics.get("test") or {}).get("calibration")
    if test:
        line += f"; test {figures(test)} (not fitted: the honest figure)"
    return line


def reliability_png(blocks: list[tuple[str, dict[str, Any]]]) -> bytes:
    """A reliability diagram per block (accuracy against confidence per bin, before and after the temperature,
    the diagonal being perfect calibration), side by side, as PNG bytes."""
    from cvkeras.analysis.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(blocks), figsize=(5 * len(blocks), 4.4), squeeze=False)
    for ax, (title, block) in zip(axes[0], blocks, strict=True):
        bins = int(block.get("bins", ECE_BINS))
        width = 1.0 / bins
        mids = (np.arange(bins) + 0.5) * width
        for key, colour, label in (("before", "tab:grey", "before"), ("after", "tab:blue", "after")):
            acc = [np.nan if a is None else a for a in block[f"reliability_{key}"]["accuracy"]]
            ax.bar(mids, acc, width=width * 0.9, alpha=0.45 if key == "before" else 0.75, color=colour,
                   edgecolor="black", linewidth=0.4,
                   label=f"{label}: ECE {block[f'ece_{key}']:.3f}, NLL {block[f'nll_{key}']:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: {block['n']} images, T {block['temperature']:.3g}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def report_parts(metrics: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], bytes | None]:
    """``report.html``'s calibration section as text, table header, table rows and reliability diagram PNG
    (no table and no diagram for a run without a temperature)."""
    cal = metrics.get("calibration")
    if not cal:
        return ("No temperature in metrics.json (a run from before calibration): <code>cvkeras evaluate RUN</code> "
                "fits one.", [], [], None)
    blocks = [("validation (fitted)", cal)]
    test = (metrics.get("test") or {}).get("calibration")
    if test:
        blocks.append(("test (not fitted)", test))
    rows = [[name, b["n"], *(f"{b[k]:.4f}" for k in ("ece_before", "ece_after", "nll_before", "nll_after"))]
            for name, b in blocks]
    text = (f"Scores are softmax(log p / T) with temperature T = {cal['temperature']:.4g}, fitted on the validation "
            "split (minimum NLL); export writes it into the model metadata and the device applies it. The after "
            "figures on validation are fitted figures" + ("; the test figures are the honest ones" if test else
                                                          "; <code>--test-split</code> sets aside images for an "
                                                          "honest one")
            + f". ECE: {cal.get('bins', ECE_BINS)} equal-width bins of the top-1 confidence.")
    return text, ["images", "n", "ECE before", "ECE after", "NLL before", "NLL after"], rows, reliability_png(blocks)
