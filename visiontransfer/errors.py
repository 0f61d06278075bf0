"""Errors a user fixes by changing the command line or the config, not the code.

The ``visiontransfer`` command prints these as one line (``visiontransfer fit: error: ...``) and
exits with status 2, before any training starts; the library raises them like any exception.
They subclass the built-in types code already catches (``ValueError``, ``FileNotFoundError``).

Who raises what: constructors (modules, datamodules, callbacks) validate their arguments once
and raise :class:`ConfigError` naming the flag (:func:`flag`, :func:`require`); pure functions
(losses, transforms, ops) raise a plain ``ValueError`` naming their own parameter.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is out of range, inconsistent with another, or with the data.

    The message names the flag (``--model.lr``), the value, the allowed range and the fix.
    """


class MissingPathError(ConfigError, FileNotFoundError):
    """A path given in the config (``--data.root``, ``--model.backbone``...) does not exist."""


def flag(group: str, name: str) -> str:
    """The command-line flag of constructor argument ``name`` of the ``group`` (``model``,
    ``data``, ``trainer``) class: ``--model.lr``. The one place that spells flags."""
    return f"--{group}.{name}"


def require(ok: bool, group: str, name: str, value: Any, requirement: str) -> None:
    """Raise ``ConfigError("--{group}.{name}={value} {requirement}")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{flag(group, name)}={value} {requirement}")


def flag_error(group: str, error: ValueError) -> ConfigError:
    """A pure function's ``ValueError`` about an argument a constructor passed straight through,
    as that constructor's flag: pure functions start such messages with ``name=value``, so
    ``rotations=[0, 45]: ...`` becomes ``--model.rotations=[0, 45]: ...``."""
    return ConfigError(f"--{group}.{error}")
