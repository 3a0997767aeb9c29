"""Reading and writing photographs without losing what the deblurring does not touch.

A photo is loaded as its own integer levels (`LoadedImage.pixels`, (1, 3, H, W) uint8 or uint16; see
`planes`), never as a whole float array: the network sees float tiles cut from it. Everything else about
the file -- alpha, bit depth, grayscale-ness, ICC profile, EXIF -- is kept on the `LoadedImage` and put
back on save, so a deblurred photo differs from its input only in its pixels.

Pillow has no 16-bit RGB or gray + alpha mode: `codec16` reads and writes those. `heif` finds the HEIC and
AVIF codecs when such a file is met. Animated and multi-page files are refused: msdn deblurs still photos.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError, features
from torch import Tensor

from deblur_cli.imaging import heif
from deblur_cli.imaging.codec16 import PNG_LEVEL, decode_16bit, gray16_planes, png16, tiff16, truncated_rawmode
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.imaging.exif import orient, orientation, upright_exif
from deblur_cli.imaging.planes import PIXEL_DTYPES, STRIP, Encoding, hwc, pixels_tensor, quantize, to_float
from deblur_cli.files import atomic_write_bytes, write_error

# Formats Pillow always reads and writes, with the Pillow format of each extension (training and eval sets use these).
CORE_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                                ".tiff": "TIFF", ".bmp": "BMP"}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(CORE_FORMATS)
# What deblur and deblur-dir read and write: the core and the phone formats, whose codecs `heif` finds when needed.
OUTPUT_FORMATS: dict[str, str] = {**CORE_FORMATS, **heif.FORMATS}
READ_EXTENSIONS: frozenset[str] = frozenset(OUTPUT_FORMATS)
DEFAULT_MAX_PIXELS = 100_000_000  # a 100 MP 8-bit photo needs ~0.6 GB in and out, ~1.5 GB with 16 bits or alpha
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_STILL_WITH_EXTRAS = frozenset({"MPO"})  # JPEG + previews or a stereo pair's other eye: the first frame is the photo
# Errors Pillow and its codecs raise on a file that is not what it claims to be.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, TypeError)


@dataclass
class LoadedImage:
    """A decoded photo: the RGB the network sees plus what must survive the round trip to disk.

    `pixels` are already upright (EXIF orientation applied) and `exif` has its orientation reset to 1,
    so viewers do not rotate the output a second time.
    """

    pixels: Tensor  # (1, 3, H, W) levels: torch.uint8 for 8-bit photos, torch.uint16 for 16-bit ones
    alpha: Tensor | None  # (1, 1, H, W) levels of the same dtype
    bit_depth: int  # 8 or 16
    mode: str  # Pillow mode of the source ("RGB", "L", "I;16", "RGBA", "P", "CMYK", ...; "LA" also at 16 bits)
    icc_profile: bytes | None = None
    exif: bytes | None = None

    @property
    def is_gray(self) -> bool:
        return self.mode in GRAY_MODES

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports sizes."""
        return self.pixels.shape[-1], self.pixels.shape[-2]

    @property
    def rgb(self) -> Tensor:
        """(1, 3, H, W) float32 in [0, 1]: a new 12-bytes-a-pixel copy, for metrics and float code;
        `deblur(model, loaded.pixels)` needs none."""
        return to_float(self.pixels)


# --- small tensor <-> Pillow helpers -------------------------------------------------------------


def to_tensor(image: Image.Image) -> Tensor:
    """(1, 3, H, W) float32 in [0, 1] from any Pillow image (16-bit grayscale keeps its precision)."""
    if image.mode.startswith("I"):
        return to_float(pixels_tensor(gray16_planes(image)))
    return to_float(pixels_tensor(_pil_array(image, "RGB")))


def to_pil(rgb: Tensor) -> Image.Image:
    """An 8-bit RGB Pillow image from a (1, 3, H, W) or (3, H, W) tensor in [0, 1]."""
    return Image.fromarray(quantize(hwc(rgb.float()), 8))


def save_rgb(path: Path, rgb: Tensor, quality: int = 95) -> None:
    """Write a plain 8-bit RGB tensor (previews, side-by-side strips) atomically, format from the extension."""
    path = Path(path)
    fmt = output_format(path)
    check_output_dir(path)
    _save_pil(path, to_pil(rgb), fmt, quality=quality, icc_profile=None, exif=None)


# --- loading -------------------------------------------------------------------------------------


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode `path` for the network; every problem a user can cause becomes one MsdnError line."""
    path = Path(path)
    check_input_file(path)
    with _open(path, max_pixels) as im:
        mode = im.mode
        rawmode = truncated_rawmode(im)  # before getexif() loads the pixels
        try:
            if rawmode is not None:
                (planes, mode), bit_depth = decode_16bit(path, im, rawmode), 16
            else:
                im.load()
                planes, bit_depth, icc = _decode_pil(im, im.info.get("icc_profile") or None)
            # read after decoding: PNG keeps EXIF after the pixels, and Pillow's TIFF loader turns the
            # pixels upright itself and then drops the tag, so it must not be applied twice
            turn = orientation(im)
            exif = upright_exif(im.info.get("exif"))
            if rawmode is not None:
                icc = im.info.get("icc_profile") or None
        except MsdnError:
            raise
        except Image.DecompressionBombError as exc:
            raise MsdnError(f"{path}: {first_line(exc)}") from None
        except _DECODE_ERRORS as exc:
            raise MsdnError(f"{path}: cannot decode the image, it may be truncated or corrupt "
                            f"({first_line(exc)})") from None
    pixels = pixels_tensor(orient(planes, turn))  # a view: 3 (RGB) or 4 (alpha) levels a pixel
    return LoadedImage(
        pixels=pixels[:, :3],
        alpha=pixels[:, 3:] if pixels.shape[1] == 4 else None,
        bit_depth=bit_depth,
        mode=mode,
        icc_profile=icc,
        exif=exif,
    )


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone: a bad or oversized file is refused before any real work."""
    path = Path(path)
    check_input_file(path)
    with _open(path, max_pixels) as im:
        return im.size


def file_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words (a FIFO would block a read, a device never ends)."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_input_file(path: Path) -> None:
    """The usual ways a path is not a readable file, each as one line (decoding problems come later)."""
    path = Path(path)
    if path.is_dir():
        raise MsdnError(f"{path} is a directory, not an image (use `msdn deblur-dir` for folders)")
    if not path.exists():
        raise MsdnError(f"no such file: {path}")
    if not path.is_file():
        raise MsdnError(f"{path} is {file_kind(path)}, not an image file")
    if not os.access(path, os.R_OK):
        raise MsdnError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise MsdnError(f"{path} is empty (0 bytes)")


@contextlib.contextmanager
def _open(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open for header reading only, refusing oversized images before any pixel is decoded."""
    heif.require_reader(path)
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the check below replaces Pillow's (also made from the header), with our limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(path)
            except Image.DecompressionBombError as exc:
                raise MsdnError(f"{path} is over the pixel limit ({first_line(exc)}); raise --max-pixels to allow it") from None
            except UnidentifiedImageError:
                raise MsdnError(f"{path} is not an image file Pillow can read") from None
            except _DECODE_ERRORS as exc:
                raise MsdnError(f"{path}: cannot read the image header ({first_line(exc)})") from None
            with im:
                w, h = im.size
                if w * h > max_pixels:
                    raise MsdnError(f"{path} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                    f"(raise --max-pixels to allow it)")
                if w == 0 or h == 0:
                    raise MsdnError(f"{path} has no pixels ({w}x{h})")
                _refuse_frames(path, im)
                yield im
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _refuse_frames(path: Path, im: Image.Image) -> None:
    """One line for an animation or a multi-page file: deblurring only its first frame would lose the rest silently."""
    try:
        frames = getattr(im, "n_frames", 1) if im.format not in _STILL_WITH_EXTRAS else 1
    except _DECODE_ERRORS as exc:
        raise MsdnError(f"{path}: cannot read the image header ({first_line(exc)})") from None
    if frames > 1:
        kind = {"TIFF": "a multi-page TIFF", "HEIF": "a multi-image HEIF"}.get(im.format or "", "an animated image")
        raise MsdnError(f"{path} is {kind} ({frames} frames); msdn deblurs still photos: extract the frames first")


def _decode_pil(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, int, bytes | None]:
    """(H, W, 3 or 4) integer planes, bit depth and the ICC profile to keep, for what Pillow decodes fully."""
    mode = im.mode
    if mode.startswith("I"):
        return gray16_planes(im), 16, icc
    if mode == "F":
        raise MsdnError("floating-point images are not supported; convert it to 8- or 16-bit first")
    if mode == "CMYK":
        return _pil_array(_cmyk_to_rgb(im, icc), "RGB"), 8, None  # the CMYK profile no longer applies
    if mode in ("1", "L"):
        gray = _pil_array(im, "L")
        return np.repeat(gray[..., None], 3, axis=2), 8, icc
    if mode in ("LA", "La"):
        la = _pil_array(im, "LA")
        return np.concatenate([np.repeat(la[..., :1], 3, axis=2), la[..., 1:]], axis=2), 8, icc
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    return _pil_array(im, "RGBA" if has_alpha else "RGB"), 8, icc


def _pil_array(im: Image.Image, mode: str) -> np.ndarray:
    """One writable (H, W) or (H, W, C) uint8 array of `im` in `mode`, converted a strip at a time:
    `np.asarray(im.convert(mode))` would hold two more copies of the photo beside Pillow's own (an
    RGB JPEG peaked at 11 bytes a pixel instead of 7), and its array could not be written to."""
    width, height = im.size
    out: np.ndarray | None = None
    for top in range(0, height, STRIP):
        strip = im.crop((0, top, width, min(top + STRIP, height)))  # pointwise conversions: strips are exact
        rows = np.asarray(strip if strip.mode == mode else strip.convert(mode))
        if out is None:
            out = np.empty((height, *rows.shape[1:]), rows.dtype)
        out[top : top + rows.shape[0]] = rows
    assert out is not None
    return out


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Colour-managed when the file says how its inks look; Pillow's naive formula otherwise."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB")


# --- saving --------------------------------------------------------------------------------------


def output_format(path: Path) -> str:
    """The Pillow format name for an output path, or a one-line error naming the ones we write."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        suffix = Path(path).suffix or "(none)"
        raise MsdnError(f"cannot write {path}: unknown image extension {suffix} (use one of {known_outputs()})")
    heif.require_writer(path)  # HEIC / AVIF: the codec is there, or one line naming the extra, before any work
    return fmt


def known_outputs() -> str:
    return ", ".join(sorted(OUTPUT_FORMATS))


def output_encoding(loaded: LoadedImage, path: Path) -> Encoding:
    """How the network's RGB becomes `path`'s planes in the shape of `loaded`: its bit depth where the
    format holds it (JPEG, WebP, HEIC, AVIF and BMP have 8 bits), gray stays gray, alpha is kept, or in
    a JPEG composited on white where anything is transparent."""
    fmt = output_format(path)
    bits = 16 if loaded.bit_depth == 16 and fmt in ("PNG", "TIFF") else 8
    alpha = loaded.alpha
    composite = fmt == "JPEG" and alpha is not None and int(hwc(alpha).min()) < 2**loaded.bit_depth - 1
    if fmt == "JPEG" and not composite:
        alpha = None  # opaque: nothing to composite, and JPEG holds no alpha
    return Encoding(bits, gray=loaded.is_gray, alpha=alpha, composite=composite)


def save_image(path: Path, loaded: LoadedImage, rgb: Tensor, quality: int = 95, replace: bool = True) -> list[str]:
    """Write `rgb` ((1, 3, H, W) float in [0, 1], or levels of `loaded.pixels`' dtype) in the shape of
    `loaded`: bit depth, grayscale-ness, alpha, ICC and EXIF as far as the format allows (`output_encoding`;
    BMP has no metadata).

    Returns notes for the user about what the format could not keep (e.g. transparency in a JPEG,
    which is composited on white as a viewer would show it).
    """
    path = Path(path)
    encoding = output_encoding(loaded, path)
    check_output_dir(path)
    if rgb.shape[-2:] != loaded.pixels.shape[-2:]:
        raise ValueError(f"rgb is {tuple(rgb.shape)}, the loaded image {tuple(loaded.pixels.shape)}")
    return save_planes(path, loaded, encoding.encode(rgb), quality=quality, replace=replace)


def save_planes(path: Path, loaded: LoadedImage, planes: Tensor, quality: int = 95, replace: bool = True) -> list[str]:
    """Write the (1, C, H, W) integer planes `output_encoding(loaded, path)` makes (what `deblur` returns
    with its `rows` as `finish`), with `loaded`'s ICC profile and EXIF; notes as `save_image`'s."""
    path = Path(path)
    encoding = output_encoding(loaded, path)
    fmt = output_format(path)
    check_output_dir(path)
    expected = (1, encoding.channels, *loaded.pixels.shape[-2:])
    if tuple(planes.shape) != expected or planes.dtype != PIXEL_DTYPES[encoding.bits]:
        raise ValueError(f"planes are {tuple(planes.shape)} {planes.dtype}, {path.name} needs {expected} "
                         f"{PIXEL_DTYPES[encoding.bits]}")
    notes = [f"{path.name}: JPEG has no transparency; transparent areas were composited on white "
             "(write .png, .webp or .tif to keep them)"] if encoding.composite else []
    array = hwc(planes)  # (H, W, C): contiguous when `planes` came from `planes.new_planes`
    icc, exif = (None, None) if fmt == "BMP" else (loaded.icc_profile, loaded.exif)
    if encoding.bits == 16 and array.shape[2] > 1:  # Pillow cannot hold 16-bit RGB(A) or gray + alpha
        data = png16(array, icc, exif) if fmt == "PNG" else tiff16(array, icc)
        # Pillow cannot open a 16-bit gray + alpha TIFF
        _write(path, data, fmt, loaded.size, replace, pillow_reads=fmt == "PNG" or array.shape[2] > 2)
        return notes
    if encoding.bits == 16:  # 16-bit grayscale: Pillow's I;16
        image = Image.fromarray(array[..., 0].astype("<u2"))  # uint16 -> I;16
    else:
        image = Image.fromarray(array if array.shape[2] > 1 else array[..., 0])  # uint8 -> L, LA, RGB, RGBA
    _save_pil(path, image, fmt, quality=quality, icc_profile=icc, exif=exif, replace=replace)
    return notes


def check_output_dir(path: Path) -> None:
    """A clear error now, rather than an OSError from deep inside a save, when `path` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MsdnError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MsdnError(f"cannot write {path}: directory {parent} is not writable")
    if path.is_dir():
        raise MsdnError(f"cannot write {path}: it is a directory")


def _write(path: Path, data: bytes | memoryview, fmt: str, size: tuple[int, int], replace: bool = True,
           pillow_reads: bool = True) -> None:
    """Write an encoded image completely (checked, fsynced, read back) before it replaces anything; a
    file Pillow cannot open is read back byte for byte instead."""
    def verify(tmp: Path) -> None:
        if pillow_reads:
            _check_written(tmp, fmt, size)
        elif tmp.read_bytes() != data:
            raise OSError(errno.EIO, f"the written file does not read back as the {fmt} just encoded")
    atomic_write_bytes(path, data, verify=verify, replace=replace)


def _check_written(tmp: Path, fmt: str, size: tuple[int, int]) -> None:
    """The file on disk must read back as the image just encoded (header: format and size)."""
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the caller already decided this size is fine
    try:
        with Image.open(tmp) as im:
            found = (im.format, im.size)
    except _DECODE_ERRORS as exc:
        raise OSError(errno.EIO, f"the written file does not read back as {fmt} ({first_line(exc)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if found != (fmt, tuple(size)):
        raise OSError(errno.EIO, f"the written file reads back as {found[0]} {found[1]}, not {fmt} {tuple(size)}")


def _save_pil(path: Path, image: Image.Image, fmt: str, *, quality: int, icc_profile: bytes | None,
              exif: bytes | None, replace: bool = True) -> None:
    options: dict[str, object] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    if fmt == "JPEG":
        # 4:4:4 at high quality: chroma subsampling would blur back some of the edges we recovered
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
    elif fmt == "WEBP":
        options.update(quality=quality, method=4)
    elif fmt == "PNG":
        options.update(compress_level=PNG_LEVEL)
    elif fmt == "TIFF" and features.check("libtiff"):
        options.update(compression="tiff_deflate")
    elif fmt in ("HEIF", "AVIF"):
        options.update(heif.save_options(quality, image.mode))
    buffer = io.BytesIO()  # encode in memory: Pillow's encoders do not check for short writes to a file
    try:
        image.save(buffer, format=fmt, **options)
    except OSError as exc:  # an encoder error
        raise write_error(path, exc) from None
    _write(path, buffer.getbuffer(), fmt, image.size, replace)
