"""Errors a user fixes by changing the command line or the config, not the code.

The ``visiontransfer`` command prints these as one line (``visiontransfer fit: error: ...``) and
exits with status 2, before any training starts; the library raises them like any exception.
They subclass the built-in types code already catches (``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is out of range, inconsistent with another, or with the data.

    The message names the flag (``--model.lr``), the value, the allowed range and the fix.
    """


class MissingPathError(ConfigError, FileNotFoundError):
    """A path given in the config (``--data.root``, ``--model.backbone``...) does not exist."""
