"""Where a datamodule's images come from: a folder, a manifest, tar shards or the embedded set.

One resolver for every datamodule: :func:`resolve_source` checks that at most one was given and
that it exists, and names the flag when not, at construction (before any training starts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from visiontransfer.data.shards import read_index
from visiontransfer.errors import ConfigError, MissingPathError, flag

SourceKind = Literal["folder", "manifest", "shards", "embedded"]

FLAGS: dict[SourceKind, str] = {"folder": "root", "manifest": "manifest", "shards": "shards"}
"""The ``--data.*`` argument of each kind of source."""


@dataclass(frozen=True)
class ImageSource:
    """A resolved image source.

    Attributes:
        kind: ``folder`` (``--data.root``), ``manifest``, ``shards`` or ``embedded`` (none given).
        path: The folder or file; None for the embedded set.
    """

    kind: SourceKind
    path: str | None = None

    @property
    def flag(self) -> str:
        """The flag that named the source (``--data.root``...); empty for the embedded set."""
        return flag("data", FLAGS[self.kind]) if self.kind != "embedded" else ""

    def describe(self) -> str:
        """``--data.root='/images'``, or ``the embedded procedural set``."""
        return f"{self.flag}={self.path!r}" if self.path is not None else "the embedded procedural set"


def resolve_source(
    root: str | None = None, manifest: str | None = None, shards: str | None = None
) -> ImageSource:
    """The one source given (the embedded set when none is).

    Raises:
        ConfigError: more than one given, or a shard folder without an index.
        MissingPathError: the folder or manifest does not exist.
    """
    given = [(kind, path) for kind, path in (("folder", root), ("manifest", manifest), ("shards", shards))
             if path is not None]  # fmt: skip
    if len(given) > 1:
        raise ConfigError("give one of --data.root, --data.manifest or --data.shards, not several")
    if not given:
        return ImageSource("embedded")
    kind, path = given[0]
    source = ImageSource(kind, path)  # type: ignore[arg-type]
    if kind == "folder" and not os.path.isdir(path):
        raise MissingPathError(f"{source.describe()} does not exist or is not a folder")
    if kind == "manifest" and not os.path.isfile(path):
        raise MissingPathError(f"{source.describe()} does not exist or is not a file")
    if kind == "shards":
        read_index(path)  # fails early, naming --data.shards
    return source
