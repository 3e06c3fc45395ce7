"""``cvkeras distill``: finetune's command with a teacher (see :mod:`cvkeras.search.distill`).

The command takes every ``finetune`` flag -- its signature is finetune's own, with ``--model`` renamed
``--student`` and ``--teacher``, ``--temperature`` and ``--alpha`` added -- so the two never drift apart.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from cvkeras.cli.finetune import finetune_parameters, load_config, run_finetune
from cvkeras.cli.helpfmt import FinetuneHelpCommand
from cvkeras.serving.errors import CvkerasError, fail


def register(app: typer.Typer) -> None:
    """Add ``distill`` to the app (passed in, so ``python -m cvkeras.cli`` registers on its own app)."""
    from cvkeras.search.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

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
        from cvkeras.train.quiet import quiet_tensorflow

        quiet_tensorflow()
        from cvkeras.search.distill import Distillation

        kw["model"] = kw.pop("student")
        teacher, temperature, alpha = kw.pop("teacher"), kw.pop("temperature"), kw.pop("kd_alpha")
        output, resume, force, quiet = kw["output"], kw["resume"], kw["force"], kw["quiet"]
        try:
            cfg, doc = load_config(kw, resume)
        except CvkerasError as exc:
            raise fail(exc) from None
        recorded = ((doc.get("run") or {}).get("distill") or {}) if isinstance(doc.get("run"), dict) else {}
        if resume and teacher and recorded.get("teacher") and \
                Path(teacher).resolve() != Path(recorded["teacher"]).resolve():
            raise fail(f"{output}: was distilled from {recorded['teacher']}; --resume continues with that teacher, "
                       "so drop --teacher or start a new run with another --output")
        teacher = teacher or recorded.get("teacher")
        temperature = temperature if temperature is not None else recorded.get("temperature", DEFAULT_TEMPERATURE)
        alpha = alpha if alpha is not None else recorded.get("alpha", DEFAULT_ALPHA)
        if not teacher:
            raise fail("--teacher RUN is required: the run directory of a finished `cvkeras finetune`")
        if not kw["model"] and not (kw["config"] or resume):
            raise fail("--student MODEL is required (a registry name, see `cvkeras models`), e.g. --student mobilenet")
        if output and Path(output).resolve() == Path(teacher).resolve():
            raise fail(f"{output}: is the teacher run; pick another --output for the student")
        if cfg.strategy in ("mirrored", "multi-worker"):
            raise fail(f"distill trains on one device; --strategy {cfg.strategy} is not supported, use none")
        cfg.strategy = "none"
        from cvkeras.run.config import validate_config

        try:
            if cfg.data or not resume:  # the student's settings first: a typo never waits for the teacher
                validate_config(cfg)
            hook = Distillation.from_run(teacher, temperature, alpha,
                                         log=None if quiet else (lambda line: print(line, flush=True)))
        except CvkerasError as exc:
            raise fail(exc) from None
        run_finetune(cfg, output, force, resume, quiet, hook=hook)

    params = []
    for p in finetune_parameters(drop=("json_out",)):
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
    app.command(name="distill", cls=FinetuneHelpCommand)(distill)
