"""``cvkeras predict | validate | benchmark``: thin Typer commands over the serving library.

The functions here are plain Typer command functions; ``cvkeras.cli`` registers them with
``app.command()(cvkeras.serving.cli.predict)`` and so on. They never import TensorFlow, print a rich table by
default (:mod:`cvkeras.serving.tables`) or JSON with ``--json``, and turn every expected failure into
one ``error: ...`` line on stderr with exit code 2 (never a traceback).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from cvkeras.serving.console import print_json
from cvkeras.serving.errors import CvkerasError, OptionError, fail, quote
from cvkeras.serving.images import expand_paths
from cvkeras.serving.schema import schema_id
from cvkeras.serving.tables import benchmark_table, prediction_table, validation_tables
from cvkeras.serving.validate import DEFAULT_MIN_AGREEMENT

#: Failures a user can fix (bad file, wrong folder, missing package); anything else is a bug.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CvkerasError, OSError)

ModelArg = Annotated[Path, typer.Argument(help="Model file: an .onnx or .tflite written by `cvkeras export`.",
                                          show_default=False)]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Runtime intra-op threads "
                                                "(default: the runtime's choice).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (docs/json.md).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per inference call.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="latency: one image at a time, spinning runtime "
                                      "threads; throughput: decoding overlapped with inference; auto: "
                                      "latency for a single file, throughput otherwise.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected errors into one stderr line and exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except EXPECTED_ERRORS as exc:
        raise fail(str(exc) or type(exc).__name__, 2) from None


def load_checked(model: Path, allow_failed: bool, **kwargs: Any) -> Any:
    """``Predictor.load``, with a model marked failed by ``cvkeras export`` refused (exit 2) or, with
    ``allow_failed``, named in one ``warning:`` line on stderr."""
    import warnings

    from cvkeras.serving.metadata import FailedModelWarning
    from cvkeras.serving.predictor import Predictor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FailedModelWarning)
        predictor = Predictor.load(model, **kwargs)
    for w in caught:
        if issubclass(w.category, FailedModelWarning):
            if not allow_failed:
                raise fail(f"{w.message}; pass --allow-failed to run it anyway", 2)
            typer.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return predictor


def predict(
    model: ModelArg,
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).",
                                                show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes listed per image.")] = 5,
    json_out: JsonOpt = False,
    batch_size: BatchOpt = 16,
    threads: ThreadsOpt = None,
    mode: ModeOpt = "auto",
    allow_failed: Annotated[bool, typer.Option(
        "--allow-failed", help="Run a model that failed its export check (*.FAILED.*) instead of refusing it."
    )] = False,
) -> None:
    """Classify images with an exported model; no TensorFlow needed.

    Prints a table, or one JSON object per image with --json.
    A file that cannot be read gets an error entry; the others still run.
    Exit code: 0 all classified, 1 some failed, 2 unusable model.
    """
    from cvkeras.serving.predictor import MODES
    from cvkeras.serving.results import Prediction

    if mode not in MODES:
        raise fail(f"--mode {quote(mode)}: choose one of {', '.join(MODES)}")
    entries = expand_paths(paths)
    if mode == "auto":  # one session, made for the job at hand
        mode = "latency" if sum(e is None for _, e in entries) <= 1 else "throughput"
    with _errors():
        predictor = load_checked(model, allow_failed, threads=threads, mode=mode)
    stream = predictor.iter_predict([p for p, e in entries if e is None], top_k=top_k, batch_size=batch_size)
    results: list[Prediction] = []
    with _errors():
        for path, error in entries:
            r = Prediction(None, -1, math.nan, path=path, error=error) if error else next(stream)
            results.append(r)
            if json_out:
                print_json({"schema": schema_id("prediction"), **r.to_dict()})
    if not json_out:
        prediction_table(results, top_k)
    failed = sum(not r.ok for r in results)
    if failed and not json_out:
        typer.echo(f"{failed} of {len(results)} file(s) could not be classified", err=True)
    raise typer.Exit(1 if failed else 0)


def validate(
    model: ModelArg,
    data: Annotated[Path | None, typer.Option(
        "--data", show_default=False, help="Labelled images: DIR/<label>/<image> (or DIR/val/...).")] = None,
    run: Annotated[Path | None, typer.Option(
        "--run", show_default=False, help="Validate on exactly this run's recorded validation split "
        "(default, without --data: the run whose export/ folder holds MODEL).")] = None,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="Export folder with reference.npz (default: the model's folder, if it has one)."
    )] = None,
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", min=0.0, help="Largest allowed accuracy drop vs the reference, in points."
    )] = 1.0,
    json_out: JsonOpt = False,
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = None,
    min_agreement: Annotated[float, typer.Option(
        "--min-agreement", min=0.0, max=1.0, help="Smallest top-1 agreement with the reference (fraction).",
    )] = DEFAULT_MIN_AGREEMENT,
    ood: Annotated[Path | None, typer.Option(
        "--ood", show_default=False, help="Photos of none of the classes: AUROC and false-accept rate of the "
        "model's unknown detector.")] = None,
) -> None:
    """Check an exported model's accuracy against the Keras model it came from; no TensorFlow needed.

    Reports accuracy, its drop in points, top-1 agreement and largest probability difference with the
    reference outputs saved by `cvkeras export`, and per-class accuracy. The images are --data, or with
    --run (the default for a model in RUN/export/) exactly the validation files the run recorded in
    split.json. Either way every figure is on images training never saw: images of --data that the
    reference records as training images are counted apart, with a warning.
    Exit code: 0 passed, 1 drop above --max-accuracy-drop, 2 unusable model or data.
    """
    from cvkeras.serving.reference import REFERENCE_FILE, Reference
    from cvkeras.serving.validate import scan_class_folder
    from cvkeras.serving.validate import validate as run_validation

    if data is not None and run is not None:
        raise fail("pass --data or --run, not both")
    if data is None and run is None:
        run = model.parent.parent if model.parent.name == "export" else None
        if run is None or not (run / "split.json").is_file():
            raise fail(f"{model}: pass --data DIR (DIR/<label>/<image>) or --run RUN (the run's own val split)")
    with _errors():
        # a model export marked failed is validated (to see why), with a warning line
        predictor = load_checked(model, True, threads=threads, mode="throughput")  # folders: one session
        items = scan_class_folder(data, predictor.labels) if data is not None else run_val_split(run, predictor.labels)
        ref_dir = reference if reference is not None else model.parent
        ref = None
        if reference is not None or (ref_dir / REFERENCE_FILE).is_file():
            ref = Reference.load(ref_dir)
        ood_files = None if ood is None else ood_images(ood, model, predictor.unknown is not None)
        report = run_validation(predictor, items, ref, max_accuracy_drop, batch_size, min_agreement, ood_files)
    if json_out:
        print_json(report.to_dict())
    else:
        validation_tables(report)
    if report.n_seen:
        typer.echo(f"warning: {report.n_seen} of the images were seen in training (trained on, calibrated on or "
                   "chosen on by export); they are counted apart, not in the accuracy or the gates", err=True)
    if report.gate_failures:
        typer.echo(f"error: {model.name}: {'; '.join(report.gate_failures)}", err=True)
    raise typer.Exit(0 if report.passed else 1)


def ood_images(folder: Path, model: Path, has_detector: bool) -> list[str]:
    """The image files under ``folder`` (``--ood``); an OptionError when there are none or the model has no
    unknown detector to judge."""
    if not has_detector:
        raise OptionError(f"{model}: has no unknown detector for --ood; re-export it with `cvkeras export` "
                          "(--unknown on, the default)")
    if not folder.is_dir():
        raise OptionError(f"{folder}: --ood must be a folder of photos of none of the classes")
    files = [p for p, error in expand_paths([folder]) if error is None]
    if not files:
        raise OptionError(f"{folder}: --ood folder has no images")
    return files


def run_val_split(run: Path, labels: list[str]) -> list[tuple[Path, int]]:
    """``(path, label index)`` for the validation files a run recorded in ``split.json`` (no rescan).

    Read with cvkeras.serving.formats (standard library only), so the device side stays TensorFlow-free. Files
    gone since the run are named on stderr and left out; none left, or other classes, is an error.
    """
    from cvkeras.serving import formats

    doc = formats.read_split(run)
    if doc.get("source") in ("tfds", "tfrecord") or not doc.get("val"):
        raise OptionError(f"{run / formats.SPLIT}: records no validation files (a TFDS or TFRecord run keeps them in "
                          "its records); pass --data with a folder of labelled images")
    classes = doc.get("classes") or formats.read_labels(run)
    if classes != list(labels):
        raise OptionError(f"{run / formats.SPLIT}: classes {', '.join(classes)} differ from the model's "
                         f"labels {', '.join(labels)}; pass the run this model was exported from")
    items = [(Path(p), int(y)) for p, y in doc["val"]]
    gone = [p for p, _ in items if not p.is_file()]
    if len(gone) == len(items):
        raise OptionError(f"{run / formats.SPLIT}: none of its {len(items)} validation files exist (e.g. {gone[0]}); "
                         "pass --data instead")
    if gone:
        typer.echo(f"warning: {len(gone)} recorded validation file(s) are missing (e.g. {gone[0]}); "
                   f"validating on the other {len(items) - len(gone)}", err=True)
    return [(p, y) for p, y in items if p.is_file()]


def benchmark(
    models: Annotated[list[Path], typer.Argument(help="One or more .onnx / .tflite files to compare.",
                                                 show_default=False)],
    batch_size: BatchOpt = 8,
    threads: ThreadsOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 3,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed runs per measurement and round.")] = 20,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds over all models "
                                        "and modes.")] = 5,
    json_out: JsonOpt = False,
) -> None:
    """Compare models on this device in both predictor modes (latency, throughput): load time, size,
    latency p50/p95 per image and batch, throughput, each with its spread over interleaved rounds.

    Warnings (stderr, and "warnings" in --json) flag noisy figures, ratios the spread leaves unresolved,
    and an int8 model slower than its float32 twin.
    """

    from cvkeras.serving.benchmark import benchmark as run_benchmark

    with _errors():
        doc = run_benchmark(models, batch_size=batch_size, threads=threads, warmup=warmup, iters=iters,
                            rounds=rounds)
    if json_out:
        print_json(doc)
        return
    benchmark_table(doc, batch_size, threads, rounds)
