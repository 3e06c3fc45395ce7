"""``--help`` that a newcomer can read at 80 columns: defaults, allowed values, plain types, examples.

Typer's rich help drops anything written in square brackets (``[mobilenet_v2]`` is rich markup), shows
Python types (``<list[Path]>``, ``<int range> [x>=1]``, ``<bool>``), writes required arguments as
``{run}`` and keeps the line breaks of pre-wrapped docstrings. :class:`HelpCommand` fixes that when help
is printed, for every command including those defined in ``export`` and ``serving``:

* each option's default is appended as ``(default: X)``; options that default to ``None`` so that a
  ``--config`` file can fill them in take their default from :class:`~cvkeras.run.config.FinetuneConfig`;
* the type column shows the allowed values (from the tuples the code validates with) or a plain
  ``INT``/``FLOAT``/``TEXT``/``PATH``, with a range as ``INT>=1``; flags show no type;
* arguments appear as ``RUN`` (required) or ``[DATA]`` (optional) in the usage line;
* paragraphs are re-flowed to the terminal width; indented paragraphs (examples) are kept as written.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

#: Allowed values per option name, each from the tuple the code validates with (imported lazily).
CHOICES: dict[str, Callable[[], Sequence[str]]] = {}


def _choices() -> dict[str, Callable[[], Sequence[str]]]:
    """Option name -> the module-level tuple (or dict) the command validates that option against."""

    def source(module: str, name: str) -> Callable[[], Sequence[str]]:
        return lambda: tuple(getattr(importlib.import_module(module), name))

    from cvkeras.run.config import CHOICES as CONFIG_CHOICES

    return {**{name: (lambda values=values: values) for name, values in CONFIG_CHOICES.items()},
            "mode": source("cvkeras.serving.predictor", "MODES"),
            "calibration": source("cvkeras.export.settings", "METHODS"),
            "io_type": source("cvkeras.export.tflite.convert", "IO_TYPES")}


def config_defaults() -> dict[str, Any]:
    """FinetuneConfig's field defaults by field name (the values a run gets when nothing overrides them)."""
    from cvkeras.run.config import FinetuneConfig

    return {f.name: f.default for f in fields(FinetuneConfig) if not callable(f.default_factory)}


def reflow(text: str) -> str:
    """Join the lines of each paragraph so the terminal wraps them; indented paragraphs stay as written."""
    out = []
    for para in inspect.cleandoc(text or "").split("\n\n"):
        lines = para.splitlines()
        keep = para.startswith("\b") or any(line[:1].isspace() for line in lines[1:]) or (
            lines and lines[0].rstrip().endswith(":"))
        out.append(para if keep else " ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _type_name(param: Any) -> str | None:
    if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
        return None
    if param.name in CHOICES:
        return "NAME"
    desc = param.type_descriptor
    ann = desc.annotation
    if desc.is_list:
        ann = getattr(ann, "__args__", (str,))[0]
    name = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}.get(ann, "PATH" if desc.is_path or
                                                                       getattr(ann, "__name__", "") == "Path"
                                                                       else "VALUE")
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None and hi is not None:
        name += f" {lo:g}..{hi:g}"
    elif lo is not None:
        name += f">={lo:g}"
    elif hi is not None:
        name += f"<={hi:g}"
    return name


def _default_text(param: Any, defaults: dict[str, Any]) -> str | None:
    value = param.default
    if value is None and not isinstance(param, TyperArgument):
        value = defaults.get(param.name)
    if value is None or value == [] or value == ():
        return None
    if isinstance(value, bool):
        if param.secondary_opts:
            return f"on; {param.secondary_opts[0]} turns it off" if value else "off"
        return None  # a plain flag is off unless given
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def polish(command: Any, defaults: dict[str, Any] | None = None) -> None:
    """Rewrite a command's help in place (idempotent): reflowed text, visible defaults, plain types."""
    if getattr(command, "_cvkeras_polished", False):
        return
    global CHOICES
    CHOICES = CHOICES or _choices()
    defaults = defaults or {}
    command.help = escape(reflow(command.help or ""))
    if command.epilog:
        command.epilog = escape(command.epilog)
    for param in command.params:
        text = reflow(param.help or "") if hasattr(param, "help") else ""
        text = re.sub(r"\[default: ([^\]]*)\]", r"(default: \1)", text)
        if param.name in CHOICES:
            allowed = tuple(CHOICES[param.name]())
            if not all(re.search(rf"\b{re.escape(c)}\b", text) for c in allowed):
                text = f"{text.rstrip()} One of: {', '.join(allowed)}.".strip()
        shown = _default_text(param, defaults)
        if shown is not None and "(default:" not in text and param.name != "help":
            text = f"{text.rstrip()} (default: {shown})".strip()
        param.help = escape(text)
        param.show_default = False
        # The off-switch is named in the help text: its own column would squeeze long option names
        # until rich cuts them ("--calibration-sampl…") at 80 columns. Help is printed, then the process
        # exits, so the parser never needs these again.
        param.secondary_opts = []
        type_name = _type_name(param)
        param.display_type_rich = lambda ctx, t=type_name: t
        param._get_number_range_help_str = lambda: ""
        if isinstance(param, TyperArgument):
            upper = param.name.upper()
            param.metavar = upper
            usage = (upper if param.required else f"[{upper}]") + ("..." if param.nargs != 1 else "")
            param._usage_display_name = lambda u=usage: u
    command._cvkeras_polished = True


class HelpCommand(TyperCommand):
    """A Typer command whose ``--help`` goes through :func:`polish` first, and whose Ctrl-C is one line.

    Every command's Ctrl-C (and SIGTERM, see ``cvkeras.cli.terminate_as_interrupt``) ends as one ``error:``
    line and exit 130; commands that can say more (finetune: how to resume) catch it first.
    """

    help_defaults: dict[str, Any] = {}

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from cvkeras.serving.errors import fail

            raise fail(f"interrupted; `cvkeras {ctx.info_name}` stopped -- files it finished are kept and none is "
                       "left half-written (every write is atomic); run it again", 130) from None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        polish(self, self.help_defaults)
        super().format_help(ctx, formatter)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


class HelpGroup(TyperGroup):
    """The ``cvkeras`` group: its own options polished, and each command's one-line summary reflowed."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        polish(self)
        for command in self.commands.values():
            command.help = reflow(command.help or "")
        super().format_help(ctx, formatter)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


def _plain_help_option(option: Any) -> Any:
    if option is not None:
        option.display_type_rich = lambda ctx: None
    return option


class FinetuneHelpCommand(HelpCommand):
    """``finetune``: options that default to None (so --config can fill them) show FinetuneConfig's value."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        polish(self, config_defaults())
        super().format_help(ctx, formatter)
