"""One attempt at the Hugging Face hub, then a clear error instead of five retries with backoff.

huggingface_hub retries a failed connection five times (1+2+4+8+8 s) and transformers then chains the
tracebacks. Before the first hub request kiwi checks once whether the hub's host answers; if not, it
switches the process to the hub's offline mode, so the local HF cache still serves what it holds and
anything else fails at once, as a ``HubError`` naming what was asked for and the offline alternative.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def is_local(name: str) -> bool:
    return Path(str(name)).expanduser().exists()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (one attempt, cached for the process)."""
    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection proves nothing: leave it to huggingface_hub
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """The hub's own offline mode for the rest of this process (and its DataLoader workers)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config
    except ImportError:
        return
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


def check_hub(name: str) -> str | None:
    """Before fetching ``name`` from the hub: None if the hub may be used, else why it cannot (and, when
    the hub is unreachable, the process is now offline so that the local cache is tried without retries)."""
    if is_local(name):
        return None
    if offline():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if not hub_reachable():
        go_offline()
        return "the Hugging Face hub is unreachable"
    return None
