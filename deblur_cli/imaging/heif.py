"""HEIC and AVIF, the formats phones save: their codecs are found and registered only when such a file is met.

HEIC (HEVC in HEIF) needs pillow-heif, part of the optional `formats` extra. AVIF (AV1 in HEIF) is read
and written by Pillow itself when it is built with libavif (its wheels are from 11.3, which the extra
asks for), else by pillow-avif-plugin if that is installed. Nothing here imports either package until a
.heic, .heif or .avif file (or a file whose header says HEIF or AVIF) is met, so msdn without the extra
starts as before, and a file it cannot read or write gets one line naming the extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from PIL import Image, features

from deblur_cli.errors import MsdnError

FORMATS: dict[str, str] = {".heic": "HEIF", ".heif": "HEIF", ".avif": "AVIF"}  # extension -> Pillow format
EXTRA = "pip install 'msdn-deblur[formats]'"
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1"})  # HEIF structure; the compatible brands say which codec


def _import(name: str) -> ModuleType | None:
    """The optional package, or None when it is not installed (tests replace this to simulate that)."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError):  # OSError: a wheel whose shared library cannot load
        return None


def _native_avif() -> bool:
    return features.check("avif")


def _sniff(path: Path) -> str | None:
    """"HEIF" or "AVIF" from the ISO-BMFF `ftyp` box at the start of the file, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    compatible = {head[i:i + 4] for i in range(16, min(len(head), int.from_bytes(head[:4], "big")), 4)}
    if major in _AVIF_BRANDS or (major in _GENERIC_BRANDS and compatible & _AVIF_BRANDS):
        return "AVIF"
    return "HEIF" if major in _HEIF_BRANDS | _GENERIC_BRANDS else None


def codec_of(path: Path, sniff: bool = False) -> str | None:
    """The optional codec `path` needs ("HEIF" or "AVIF") by its extension, or by its header when `sniff`."""
    return FORMATS.get(Path(path).suffix.lower()) or (_sniff(path) if sniff else None)


def _ready(fmt: str, write: bool) -> bool:
    """Whether Pillow can now read (or write) `fmt`, registering the plugin that provides it first."""
    if fmt == "AVIF":
        if _native_avif():
            return True
        plugin = _import("pillow_avif")  # pillow-avif-plugin registers itself on import
    else:
        plugin = _import("pillow_heif")
        if plugin is not None and "HEIF" not in Image.OPEN:
            plugin.register_heif_opener()
    return plugin is not None and fmt in (Image.SAVE if write else Image.OPEN)


def _label(path: Path, fmt: str) -> str:
    suffix = Path(path).suffix.lower()
    return suffix.lstrip(".").upper() if suffix in FORMATS else {"HEIF": "HEIC"}.get(fmt, fmt)


def problem(path: Path, write: bool = False) -> str | None:
    """What stops `path` from being read (or written), in words, or None once its codec is registered.

    Writing goes by the extension alone; reading also by the header (a HEIC renamed .jpg is still read).
    """
    fmt = codec_of(path, sniff=not write)
    if fmt is None or _ready(fmt, write):
        return None
    if write and fmt == "HEIF" and _import("pillow_heif") is not None:  # installed without an HEVC encoder
        return "this pillow-heif has no HEIC encoder; write .jpg, .png or .avif"
    return f"{'writing' if write else 'reading'} {_label(path, fmt)} needs the optional formats extra: {EXTRA}"


def require_reader(path: Path) -> None:
    """Make a HEIC or AVIF file readable before Pillow opens it, or say in one line what to install."""
    if (why := problem(path)) is not None:
        raise MsdnError(f"{path}: {why}")


def require_writer(path: Path) -> None:
    """Make a .heic, .heif or .avif output writable before any work, or say in one line what to install."""
    if (why := problem(path, write=True)) is not None:
        raise MsdnError(f"cannot write {path}: {why}")


def save_options(quality: int, mode: str) -> dict[str, object]:
    """Encoder options for HEIC and AVIF: as for JPEG, no chroma subsampling at high quality, since it would
    blur back some of the edges we recovered (grayscale stays one plane, 4:0:0)."""
    options: dict[str, object] = {"quality": quality}
    if mode != "L":
        options["subsampling"] = "4:4:4" if quality >= 90 else "4:2:0"
    return options
