"""Versioned document formats: one way to stamp and to check what a file claims to be.

Every document lorax_core writes (a rank plan JSON, the metadata of a hidden-states or adapter
file) names its format and the version of that format's layout. A reader accepts versions
``oldest … version`` and refuses anything else with a ``ValueError`` that says what was found
and what to do:

>>> PLAN = DocumentFormat("lorax_core.rank_plan", 1)
>>> PLAN.stamp({"layers": []})
{'format': 'lorax_core.rank_plan', 'version': 1, 'layers': []}
>>> PLAN.check({"format": "lorax_core.rank_plan", "version": 2}, "plan.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: plan.json: lorax_core.rank_plan version 2 is newer than this lorax_core reads (1)...

Safetensors metadata holds strings only: formats stored there use ``text=True``, which writes
the version as a decimal string and reads it back from one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lorax_core._validation import describe, is_integer

__all__ = ["DocumentFormat"]


@dataclass(frozen=True)
class DocumentFormat:
    """A named, versioned document layout.

    Attributes:
        name: the value of the format field, e.g. ``"lorax_core.rank_plan"``.
        version: the newest layout version this code writes and reads (an int >= 1).
        oldest: the oldest version this code still reads.
        name_key: the document key holding ``name``.
        version_key: the document key holding the version.
        text: the version is stored as a decimal string (safetensors metadata).
    """

    name: str
    version: int
    oldest: int = 1
    name_key: str = "format"
    version_key: str = "version"
    text: bool = False

    def __post_init__(self) -> None:
        if not is_integer(self.version) or not is_integer(self.oldest):
            raise TypeError("DocumentFormat: version and oldest must be ints")
        if not 1 <= self.oldest <= self.version:
            raise ValueError(
                f"DocumentFormat: need 1 <= oldest <= version, got {self.oldest}, {self.version}"
            )

    def fields(self) -> dict[str, Any]:
        """``{name_key: name, version_key: version}`` (the version a string if ``text``)."""
        return {
            self.name_key: self.name,
            self.version_key: str(self.version) if self.text else self.version,
        }

    def stamp(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``doc`` with the format and version fields first (overriding any in it)."""
        return {**self.fields(), **{k: v for k, v in doc.items() if k not in self.fields()}}

    def check(self, doc: Any, where: str, required: Iterable[str] = ()) -> int:
        """Check that ``doc`` is a document of this format in a version this code reads.

        Args:
            doc: the parsed document (a JSON object, or a safetensors metadata map).
            where: what to call the document in errors, e.g. its path.
            required: further keys the document must hold.

        Returns:
            The document's version (``oldest <= v <= version``).

        Raises:
            ValueError: ``doc`` is not a mapping, names another format (or none), has a missing,
                malformed, older or newer version, or lacks a required key.
        """
        if not isinstance(doc, Mapping):
            raise ValueError(
                f"{where}: not a {self.name} document (expected a JSON object, got "
                f"{type(doc).__name__})"
            )
        found = doc.get(self.name_key)
        if found != self.name:
            shown = "no format field" if found is None else f"{self.name_key} {describe(found)}"
            raise ValueError(f"{where}: not a {self.name} document ({shown})")
        version = self._version(doc.get(self.version_key), where)
        if version > self.version:
            raise ValueError(
                f"{where}: {self.name} version {version} is newer than this lorax_core reads "
                f"({self.version}); upgrade lorax_core"
            )
        if version < self.oldest:
            raise ValueError(
                f"{where}: {self.name} version {version} is older than this lorax_core reads "
                f"({self.oldest} to {self.version})"
            )
        missing = [key for key in required if key not in doc]
        if missing:
            listed = ", ".join(repr(key) for key in missing)
            raise ValueError(f"{where}: {self.name} document lacks {listed}")
        return version

    def _version(self, value: Any, where: str) -> int:
        if self.text and isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        if not self.text and is_integer(value):
            return int(value)
        if value is None:
            raise ValueError(f"{where}: {self.name} document has no {self.version_key!r}")
        kind = "a decimal string" if self.text else "an int"
        raise ValueError(
            f"{where}: {self.name} {self.version_key} must be {kind}, got {describe(value)}"
        )
