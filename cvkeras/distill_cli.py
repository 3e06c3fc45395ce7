"""``cvkeras distill``: finetune's command with a teacher (see :mod:`cvkeras.distill`).

The command takes every ``finetune`` flag -- its signature is finetune's own, with ``--model`` renamed
``--student`` and ``--teacher``, ``--temperature`` and ``--alpha`` added -- so the two never drift apart.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

#: finetune parameters that are not FinetuneConfig overrides
_NOT_OVERRIDES = {"data", "output", "config", "resume", "force", "quiet", "image_size", "model"}


def config_overrides(kw: dict[str, Any]) -> dict[str, Any]:
    """The FinetuneConfig overrides among finetune-style keyword arguments (None: not given)."""
    out = {k: v for k, v in kw.items() if k not in _NOT_OVERRIDES}
    out["data"] = kw.get("data")
    out["model"] = kw.get("model")
    size = kw.get("image_size")
    out["image_size"] = None if size is None else [size, size]
    return out


def base_config(config: Path | None, output: str | None, resume: bool) -> tuple[Any, dict[str, Any]]:
    """The FinetuneConfig from ``--config`` (or the run's own on ``--resume``) and the raw document.

    Raises ValueError naming the file when it cannot be read."""
    from cvkeras import rundir
    from cvkeras.config import FinetuneConfig

    source = config or (Path(output) / rundir.CONFIG if resume and output else None)
    if not source:
        return FinetuneConfig(), {}
    try:
        doc = rundir.read_config(source)
        return FinetuneConfig.from_dict(doc), doc
    except (rundir.RunDirError, ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def merged_config(kw: dict[str, Any], base: Any) -> Any:
    """finetune's rule: flags over file; a different --model drops the file's width and size."""
    from cvkeras.registry import UnknownModelError, get

    def name(n: str) -> str:
        try:
            return get(n).name
        except UnknownModelError:
            return n

    if kw.get("model") and base.model and name(kw["model"]) != name(base.model):
        base.alpha = None
        base.image_size = None
    return base.merged(config_overrides(kw))


def finetune_parameters(finetune_cmd: Callable[..., Any], drop: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """finetune's Typer parameters with their annotations resolved (cli.py uses postponed annotations)."""
    hints = typing.get_type_hints(finetune_cmd)
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(finetune_cmd).parameters.values() if p.name not in drop]


def register(app: typer.Typer, finetune_cmd: Callable[..., Any], fail: Callable[..., typer.Exit],
             run_finetune: Callable[..., Any], help_cls: type) -> None:
    """Add ``distill`` to the app (passed in, so ``python -m cvkeras.cli`` registers on its own app)."""
    from cvkeras.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

    def distill(**kw: Any) -> None:
        """Distil a fine-tuned teacher run into a smaller student; the result is an ordinary run directory.

        The student trains with finetune's two-stage recipe; each training image's loss mixes the hard label
        (weight --alpha) with the teacher's softened prediction at --temperature on the same augmented
        image. The teacher may have another backbone, input size or normalisation. best.keras is the student:
        export, evaluate, explain and report work as for any run; config.yaml records the teacher.

        Examples:
          cvkeras distill data/flowers --teacher runs/big --student mobilenet --alpha 0.25 -o runs/small
          cvkeras export runs/small --int8
        """
        from cvkeras.quiet import quiet_tensorflow

        quiet_tensorflow()
        from cvkeras.distill import Distillation, DistillError

        kw["model"] = kw.pop("student")
        teacher, temperature, alpha = kw.pop("teacher"), kw.pop("temperature"), kw.pop("kd_alpha")
        output, resume, force, quiet = kw["output"], kw["resume"], kw["force"], kw["quiet"]
        try:
            base, doc = base_config(kw["config"], output, resume)
        except ValueError as exc:
            raise fail(str(exc)) from None
        recorded = ((doc.get("run") or {}).get("distill") or {}) if isinstance(doc.get("run"), dict) else {}
        teacher = teacher or recorded.get("teacher")
        temperature = temperature if temperature is not None else recorded.get("temperature", DEFAULT_TEMPERATURE)
        alpha = alpha if alpha is not None else recorded.get("alpha", DEFAULT_ALPHA)
        if not teacher:
            raise fail("--teacher RUN is required: the run directory of a finished `cvkeras finetune`")
        if not kw["model"] and not (kw["config"] or resume):
            raise fail("--student MODEL is required (a registry name, see `cvkeras models`), e.g. --student mobilenet")
        if output and Path(output).resolve() == Path(teacher).resolve():
            raise fail(f"{output}: is the teacher run; pick another --output for the student")
        cfg = merged_config(kw, base)
        if cfg.strategy in ("mirrored", "multi-worker"):
            raise fail(f"distill trains on one device; --strategy {cfg.strategy} is not supported, use none")
        cfg.strategy = "none"
        try:
            hook = Distillation.from_run(teacher, temperature, alpha,
                                         log=None if quiet else (lambda line: print(line, flush=True)))
        except DistillError as exc:
            raise fail(str(exc)) from None
        run_finetune(cfg, output, force, resume, quiet, hook=hook)

    params = []
    for p in finetune_parameters(finetune_cmd):
        if p.name == "model":
            p = inspect.Parameter("student", p.kind, annotation=str, default=typer.Option(
                None, "--student", "-m", help="The student's registry name (see `cvkeras models`)."))
        params.append(p)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params[1:1] = [
        inspect.Parameter("teacher", kind, annotation=str, default=typer.Option(
            None, "--teacher", help="Run directory of the teacher (a finished finetune or distill run; "
                                    "required unless --config/--resume records it).")),
        inspect.Parameter("temperature", kind, annotation=float, default=typer.Option(
            None, "--temperature", help=f"Softmax temperature of the soft targets (default {DEFAULT_TEMPERATURE:g}).")),
        inspect.Parameter("kd_alpha", kind, annotation=float, default=typer.Option(
            None, "--alpha", help=f"Weight of the hard-label loss; the soft targets get 1 - alpha "
                                  f"(default {DEFAULT_ALPHA:g}).")),
    ]
    # finetune's --alpha is the width multiplier; here --alpha is the distillation weight, the width is --width
    params = [p.replace(default=typer.Option(None, "--width", help="The student's width multiplier, for families "
                                                                    "that have one."))
              if p.name == "alpha" else p for p in params]

    distill.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command(name="distill", cls=help_cls)(distill)
