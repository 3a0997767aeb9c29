"""An on-disk cache of converted networks (OpenVINO IR), checked on every read so a bad entry is rebuilt.

Why a cache: converting a generator for OpenVINO traces the torch network and takes seconds (and needs
the network built from its weights, another second on a cold process); reading a converted network back
and compiling it takes a fraction of that and needs neither, and importing the compiled network takes
a quarter of the compile. So each (weights, tile shape) is converted once, each (precision, threads,
CPU) compiled once, and later runs start from the cache. A compiled network has no checksum of its
own (a flipped byte runs, with other outputs), so it is kept under the same checks as the IR.

Where: `msdn-openvino/` beside the Hugging Face hub cache (`~/.cache/huggingface/msdn-openvino` by
default; it follows `HF_HUB_CACHE` / `HF_HOME`), or `MSDN_OPENVINO_CACHE` when set.

Trust: an entry is a folder of files plus `entry.json`, which records the entry's key and each file's size
and sha256. The folder is filled under a temporary name and renamed into place in one step, with
`entry.json` written last, so a half-written entry is never visible. A read loads the files into memory
and checks them against `entry.json`; anything that does not match (a truncated or edited file, a
missing sidecar, another key) reads as absent, so the caller converts again and the new entry replaces
the bad one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SIDECAR = "entry.json"
CACHE_ENV = "MSDN_OPENVINO_CACHE"
LEFTOVER_AGE_S = 24 * 3600  # temporary folders of a run killed mid-write, removed by a later write


@dataclass(frozen=True)
class EntryKey:
    """What a converted network depends on: the exact weights, the tile shape it was traced at, and the
    converter (OpenVINO's version and the revision of msdn's export form). `kind` tells the converted
    network ("ir") from a network compiled from it for one precision, thread count and CPU."""

    weights_sha256: str
    height: int
    width: int
    producer: str
    kind: str = "ir"

    @property
    def name(self) -> str:
        """The entry's folder: readable prefix (weights, shape, kind) + a digest of the whole key."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.weights_sha256[:16]}-{self.height}x{self.width}-{self.kind}-{digest}"


def cache_root() -> Path:
    """`MSDN_OPENVINO_CACHE`, else `msdn-openvino` beside the Hub cache (read at call time, like the Hub's)."""
    from deblur_cli.weights.hub import hub_settings

    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else hub_settings().cache_dir.parent / "msdn-openvino"


def has_entries(root: Path, weights_sha256: str) -> bool:
    """Whether any entry (valid or not) exists for these weights: they were converted here before."""
    try:
        return any(p.name.startswith(weights_sha256[:16] + "-") for p in Path(root).iterdir())
    except OSError:
        return False


def read_entry(root: Path, key: EntryKey) -> dict[str, bytes] | None:
    """The entry's files by name, read once and checked against its sidecar; None if absent or not intact."""
    folder = Path(root) / key.name
    try:
        record = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
        if record.get("key") != asdict(key) or not isinstance(record.get("files"), dict) or not record["files"]:
            return None
        files = {}
        for name, meta in record["files"].items():
            if Path(name).name != name or name == SIDECAR:
                return None  # a sidecar that names a path outside its folder vouches for nothing
            data = (folder / name).read_bytes()
            if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                return None
            files[name] = data
        return files
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def write_entry(root: Path, key: EntryKey, produce: Callable[[Path], None]) -> Path:
    """Store an entry: `produce(folder)` writes its files into a fresh temporary folder; the sidecar is
    written last and the folder renamed into place, replacing a stale or damaged entry of the same key.
    If another process stored the same key meanwhile, its entry is kept (both are the same conversion)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        produce(staging)
        files = {p.name: _describe(p) for p in sorted(staging.iterdir()) if p.is_file()}
        _write_synced(staging / SIDECAR, json.dumps({"key": asdict(key), "files": files}, indent=1).encode())
        final = root / key.name
        for old in _superseded(root, key):  # damaged, or the same network by another converter: stale
            trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
            os.replace(old, trash / "entry")  # out of the way in one step, then deleted
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _superseded(root: Path, key: EntryKey) -> list[Path]:
    """Entries a new one replaces: its own name (a valid entry is read, never rewritten, so this one is
    damaged) and the same weights, shape and kind made by another converter (an older OpenVINO)."""
    prefix = key.name.rsplit("-", 1)[0] + "-"
    return [p for p in root.iterdir() if p.name == key.name or (p.name.startswith(prefix) and p.is_dir()
                                                                 and len(p.name) == len(key.name))]


def _describe(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    with open(path, "rb+") as f:  # durable before the sidecar vouches for it
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _remove_leftovers(root: Path) -> None:
    """Temporary folders left by a run killed mid-write (a day old: never one being written now)."""
    cutoff = time.time() - LEFTOVER_AGE_S
    for path in root.iterdir():
        try:
            if path.name.startswith((".tmp-", ".stale-")) and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
