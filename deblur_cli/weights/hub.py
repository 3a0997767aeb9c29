"""The Hugging Face Hub side of named models: settings, cache look-up, download, verification.

huggingface_hub reads some settings at import time, so the endpoint, cache and offline flag are
read from the environment at call time (`hub_settings`) and passed explicitly; it is imported only
inside the functions that talk to the Hub, so deblurring a local file never pays for it. Every
file is checked against the manifest's size and sha256 before use; a mismatch is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deblur_cli.errors import MsdnError, first_line
from deblur_cli.weights.manifest import ModelEntry
from deblur_cli.weights.weightfile import sha256_file

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes) while a file downloads."""


def file_problem(path: Path, entry: ModelEntry) -> str | None:
    """Why this file is not the one the manifest pins (size first: it is free), or None if it is."""
    size = Path(path).stat().st_size
    if size != entry.size_bytes:
        return f"size {size} bytes, the manifest pins {entry.size_bytes}"
    digest = sha256_file(path)
    if digest != entry.sha256:
        return f"sha256 {digest[:12]}..., the manifest pins {entry.sha256[:12]}..."
    return None


def verify_file(path: Path, entry: ModelEntry, what: str = "file") -> Path:
    """`path` if it is the pinned file, else a one-line refusal naming `what` it is (bundled, cached...)."""
    problem = file_problem(path, entry)
    if problem is not None:
        raise MsdnError(f"refusing {what} {path} for model '{entry.name}': {problem}")
    return Path(path)


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    offline: bool


def hub_settings(offline: bool = False) -> HubSettings:
    """HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE as they are now (not at import)."""
    env = os.environ
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if env.get("HF_HUB_CACHE"):
        cache = Path(env["HF_HUB_CACHE"])
    else:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                   "huggingface")
        cache = Path(home) / "hub"
    env_offline = env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return HubSettings(endpoint=endpoint, cache_dir=cache.expanduser(), offline=offline or env_offline)


def _tqdm_for(progress: Progress) -> type:
    """A silent tqdm class that forwards byte counts to `progress` (huggingface_hub's only hook)."""
    from tqdm.std import tqdm

    class _CallbackBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._size = int(kwargs.get("total") or 0)
            progress(self._done, self._size)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            progress(self._done, max(self._size, self._done))
            return None

    return _CallbackBar


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """huggingface_hub logs every retry of a failed request to stderr ("Retrying in 8s [Retry 5/5]",
    "Connection refused ..."); it still retries, but the user reads only msdn's one line at the end."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _hub_error(exc: BaseException, entry: ModelEntry, settings: HubSettings) -> MsdnError:
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{entry.repo_id} on {settings.endpoint}"
    if isinstance(exc, RevisionNotFoundError):
        return MsdnError(f"revision {entry.revision} of model '{entry.name}' does not exist in {where} "
                         "(the manifest pins a commit the repository does not have)")
    if isinstance(exc, RepositoryNotFoundError):
        return MsdnError(f"repository {where} not found, or private/gated (model '{entry.name}')")
    if isinstance(exc, LocalEntryNotFoundError):
        return MsdnError(f"model '{entry.name}' could not be downloaded from {where} (after huggingface_hub's retries) "
                         f"and is not in the Hub cache "
                         f"{settings.cache_dir}: check the network, or run `msdn weights download {entry.name}` on "
                         "a connected machine, or pass --weights PATH")
    if isinstance(exc, EntryNotFoundError):
        return MsdnError(f"file {entry.filename} not found in {where} at revision {entry.revision[:12]}")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return MsdnError(f"downloading model '{entry.name}' from {where} failed (HTTP {status})")
    return MsdnError(f"downloading model '{entry.name}' from {where} failed: {first_line(exc)}")


def cached_file(entry: ModelEntry, settings: HubSettings | None = None) -> Path | None:
    """The file in the Hub cache for this pinned revision (unverified), or None. Never touches the network."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if entry.repo_id is None:
        return None
    settings = settings or hub_settings()
    try:
        with quiet_hub():
            path = hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision,
                                   cache_dir=settings.cache_dir, endpoint=settings.endpoint, local_files_only=True,
                                   token=False)
    except (EntryNotFoundError, OSError, ValueError):
        return None
    return Path(path)


def download_file(entry: ModelEntry, settings: HubSettings | None = None, *, force: bool = False,
                  progress: Progress | None = None) -> Path:
    """Fetch the pinned file into the Hub cache and verify it (a cached copy is reused unless `force`).

    Manifest models are public, so no token is sent (none leaks to a mirror or test endpoint).
    """
    from huggingface_hub import hf_hub_download

    settings = settings or hub_settings()
    if settings.offline:
        raise MsdnError(f"model '{entry.name}' is not in the Hub cache {settings.cache_dir} and downloads are off "
                        "(--offline or HF_HUB_OFFLINE): run `msdn weights download "
                        f"{entry.name}` on a connected machine and copy its cache, or pass --weights PATH")
    try:
        with quiet_hub():
            path = hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision,
                                   cache_dir=settings.cache_dir, endpoint=settings.endpoint, force_download=force,
                                   token=False, tqdm_class=_tqdm_for(progress) if progress is not None else None)
    except Exception as exc:  # huggingface_hub and httpx raise many types; all become one line
        raise _hub_error(exc, entry, settings) from None
    return verify_file(Path(path), entry, "downloaded file")
