"""Errors kiwi anticipates (config, data, hub, device).

The entry points print a ``KiwiError`` as one clear line (what failed, which option/file/row, what to do)
without a traceback; unexpected exceptions keep theirs. Each subclass also derives from the builtin a caller
would catch anyway, so ``except ValueError`` still works.
"""

from __future__ import annotations


class KiwiError(Exception):
    """A failure the user can fix; the message alone must say how."""


class ConfigError(KiwiError, ValueError):
    """A config value is invalid or inconsistent (names the option)."""


class DataError(KiwiError, ValueError):
    """Input data is missing, empty or malformed (names the source, file and 1-based line or row)."""


class HubError(KiwiError, OSError):
    """A model, tokenizer or dataset could not be fetched (names it and the offline alternative)."""


class DeviceError(KiwiError, RuntimeError):
    """The requested accelerator or trainer does not fit this machine (names the option to change)."""
