"""Errors kiwi anticipates (config, data, hub, device, checkpoint).

The entry points print a ``KiwiError`` as one clear line (what failed, which option/file/row, what to do)
without a traceback; unexpected exceptions keep theirs. Each subclass also derives from the builtin a caller
would catch anyway, so ``except ValueError`` still works.
"""

from __future__ import annotations


class KiwiError(Exception):
    """A failure the user can fix; the message alone must say how. ``exit_code``: the process's exit status."""

    exit_code = 1


class ConfigError(KiwiError, ValueError):
    """A config value is invalid or inconsistent (names the option)."""


class DataError(KiwiError, ValueError):
    """Input data is missing, empty or malformed (names the source, file and 1-based line or row)."""


class HubError(KiwiError, OSError):
    """A model, tokenizer or dataset could not be fetched (names it and the offline alternative)."""


class DeviceError(KiwiError, RuntimeError):
    """The requested accelerator or trainer does not fit this machine (names the option to change)."""


class CheckpointError(KiwiError, ValueError):
    """A checkpoint cannot be loaded as the model it was trained as (names the file and why)."""


def worker_message(err: BaseException) -> str | None:
    """The original message of an error torch re-raised from a DataLoader worker, or None for any other.

    torch re-raises it as the same type with the worker's whole formatted traceback as its message ("Caught
    DataError in DataLoader worker process 0. Original Traceback ..."); the original message is what follows
    the last ``<module>.<Type>: `` of that traceback."""
    msg = str(err)
    head = f"{type(err).__module__}.{type(err).__qualname__}: "
    if not (msg.startswith("Caught ") and "Original Traceback" in msg and head in msg):
        return None
    return msg.rstrip("\n").rpartition(head)[2]
