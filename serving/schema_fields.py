"""What one documented JSON field is (:class:`Field`) and one document kind (:class:`Schema`), and the units
the field tables share. The tables themselves are one module per document family (``schema_training``,
``schema_export``, ``schema_serving``); :mod:`cvkeras.serving.schema` gathers them. Standard library only (the
device side uses it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One documented field: ``path`` (see ``INTRO`` in :mod:`cvkeras.serving.schema`), JSON type, unit (``""``:
    none) and meaning."""

    path: str
    type: str
    unit: str
    doc: str
    required: bool = True  # required fields are checked where their parent object is present


@dataclass(frozen=True)
class Schema:
    """One document kind: its fields, where it is written or printed, and the version its ``schema`` id carries."""

    kind: str
    version: int
    title: str
    where: str
    fields: tuple[Field, ...]

    @property
    def id(self) -> str:
        return f"cvkeras.{self.kind}/{self.version}"


#: Unit of every proportion in the JSON (accuracies, agreements, drops, gates).
FRACTION = "fraction 0..1"
#: Unit of a 95 % interval of such a proportion.
INTERVAL = "fraction, [low, high] 95 % interval"
