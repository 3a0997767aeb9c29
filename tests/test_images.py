"""Image I/O: every mode round-trips, metadata survives, and bad files fail with one clear line.

16-bit RGB is checked against independent references: a naive scanline PNG writer/reader written
here (filter types 0-4 straight from the PNG spec, pure Python) and tifffile for TIFF.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps

from deblur_cli.imaging import images
from deblur_cli.errors import MsdnError
from deblur_cli.imaging.images import LoadedImage, load_image, save_image, save_rgb, to_pil, to_tensor

RNG = np.random.default_rng(1234)


def _u8(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


def _as_uint(t: torch.Tensor, bits: int) -> np.ndarray:
    return np.rint(_hwc(t) * (2**bits - 1)).astype(np.uint16 if bits == 16 else np.uint8)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int = 1, make: str = "TestCam") -> bytes:
    exif = Image.Exif()
    exif[0x010F] = make  # Make
    exif[0x0112] = orientation
    return exif.tobytes()


# --- reference 16-bit PNG codec (independent of deblur_cli.imaging.images) --------------------------------


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _ref_png16_write(array: np.ndarray, interlace: bool = False) -> bytes:
    """Filter type 0 for every row: the simplest valid encoding (Adam7: the seven passes' sub-images in turn)."""
    h, w, c = array.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    passes = [array[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7] if interlace else [array]
    rows = b"".join(b"\x00" + line.astype(">u2").tobytes() for sub in passes if sub.shape[1] for line in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _ref_png16_read(data: bytes) -> tuple[np.ndarray, dict[bytes, bytes]]:
    """Scanline-by-scanline decoder with all five PNG filters, as the PNG specification writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, {}, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        idat += body if kind == b"IDAT" else b""
        chunks[kind] = body
        pos += 12 + length
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 16
    c = {2: 3, 4: 2, 6: 4}[ctype]
    bpp, stride = 2 * c, 2 * c * w
    raw = zlib.decompress(idat)
    prev = [0] * stride
    out = []
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else cc)) & 255
        out.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(out), dtype=">u2").reshape(h, w, c).astype(np.uint16), chunks


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
def test_8bit_rgb_round_trip_is_exact(tmp_path: Path, ext: str) -> None:
    pixels = _u8((13, 17, 3))
    src = tmp_path / f"in{ext}"
    Image.fromarray(pixels).save(src, **({"lossless": True} if ext == ".webp" else {}))
    loaded = load_image(src)
    assert loaded.pixels.shape == (1, 3, 13, 17) and loaded.pixels.dtype == torch.uint8
    assert loaded.rgb.shape == (1, 3, 13, 17) and loaded.rgb.dtype == torch.float32
    assert loaded.bit_depth == 8 and loaded.alpha is None and loaded.mode == "RGB"
    np.testing.assert_array_equal(_hwc(loaded.pixels), pixels)
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 8), pixels)
    out = tmp_path / f"out{ext}"
    save_image(out, loaded, loaded.pixels, quality=100)  # integer levels are written as they are
    with Image.open(out) as im:
        assert im.mode == "RGB"
        if ext != ".webp":  # WebP at quality 100 is still lossy
            np.testing.assert_array_equal(np.asarray(im), pixels)


def test_jpeg_output_uses_quality(tmp_path: Path) -> None:
    smooth = np.clip(np.add.outer(np.arange(64), np.arange(64))[..., None] * 2 + _u8((64, 64, 3)) // 8, 0, 255)
    src = tmp_path / "in.png"
    Image.fromarray(smooth.astype(np.uint8)).save(src)
    loaded = load_image(src)
    save_image(tmp_path / "hi.jpg", loaded, loaded.rgb, quality=95)
    save_image(tmp_path / "lo.jpg", loaded, loaded.rgb, quality=20)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size
    errors = {}
    for name in ("hi", "lo"):
        with Image.open(tmp_path / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            errors[name] = np.abs(np.asarray(im).astype(int) - smooth).mean()
    assert errors["hi"] < 5 < errors["lo"]


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_png_is_read_and_written_at_16_bits(tmp_path: Path, channels: int) -> None:
    pixels = _u16((9, 11, channels))
    src = tmp_path / "in.png"
    src.write_bytes(_ref_png16_write(pixels))
    loaded = load_image(src)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 16), pixels[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(_hwc(loaded.alpha)[..., 0], pixels[..., 3])
    else:
        assert loaded.alpha is None

    out = tmp_path / "out.png"
    save_image(out, loaded, loaded.rgb)
    decoded, chunks = _ref_png16_read(out.read_bytes())
    np.testing.assert_array_equal(decoded, pixels)
    with Image.open(out) as im:  # libpng-compatible: Pillow decodes it (to the high bytes)
        assert im.mode == ("RGB" if channels == 3 else "RGBA")
        np.testing.assert_array_equal(np.asarray(im), (pixels >> 8).astype(np.uint8))


def test_16bit_png_keeps_icc_and_exif(tmp_path: Path) -> None:
    pixels = _u16((6, 5, 3))
    icc, exif = _srgb_icc(), _exif(make="Sixteen")
    loaded = LoadedImage(pixels=torch.from_numpy(pixels).permute(2, 0, 1)[None], alpha=None,
                         bit_depth=16, mode="RGB", icc_profile=icc, exif=exif)
    out = tmp_path / "out.png"
    save_image(out, loaded, loaded.rgb)
    decoded, chunks = _ref_png16_read(out.read_bytes())
    np.testing.assert_array_equal(decoded, pixels)
    assert zlib.decompress(chunks[b"iCCP"].split(b"\x00", 1)[1][1:]) == icc
    again = load_image(out)
    assert again.icc_profile == icc and again.bit_depth == 16
    assert Image.open(out).getexif()[0x010F] == "Sixteen"


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_tiff_round_trip_against_tifffile(tmp_path: Path, compression: str | None, channels: int) -> None:
    tifffile = pytest.importorskip("tifffile")
    pixels = _u16((21, 10, channels))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, pixels, photometric="rgb", compression=compression, rowsperstrip=4,
                     extrasamples=["unassalpha"] if channels == 4 else None)
    loaded = load_image(src)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 16), pixels[..., :3])
    loaded.icc_profile = _srgb_icc()
    out = tmp_path / "out.tiff"
    save_image(out, loaded, loaded.rgb)
    with tifffile.TiffFile(out) as tif:
        np.testing.assert_array_equal(tif.asarray(), pixels)
        assert tif.pages[0].tags[34675].value == loaded.icc_profile
    with Image.open(out) as im:
        assert im.info["icc_profile"] == loaded.icc_profile


def test_16bit_output_in_8bit_format_is_quantised(tmp_path: Path) -> None:
    pixels = _u16((5, 6, 3))
    src = tmp_path / "in.png"
    src.write_bytes(_ref_png16_write(pixels))
    loaded = load_image(src)
    save_image(tmp_path / "out.jpg", loaded, loaded.rgb)
    save_image(tmp_path / "out.bmp", loaded, loaded.rgb)
    with Image.open(tmp_path / "out.bmp") as im:
        np.testing.assert_array_equal(np.asarray(im), np.rint(pixels / 257.0).astype(np.uint8))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grayscale_stays_16bit_grayscale(tmp_path: Path, ext: str) -> None:
    gray = _u16((7, 9))
    src = tmp_path / f"in{ext}"
    Image.fromarray(gray).save(src)  # uint16 -> I;16
    loaded = load_image(src)
    assert loaded.is_gray and loaded.bit_depth == 16
    for channel in range(3):
        np.testing.assert_array_equal(_as_uint(loaded.rgb, 16)[..., channel], gray)
    out = tmp_path / f"out{ext}"
    save_image(out, loaded, loaded.rgb)
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), gray)


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) straight from the IHDR bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">IIBB", data[16:26])


@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_gray_alpha_png_stays_16bit_gray_alpha(tmp_path: Path, interlace: bool) -> None:
    """Issue #20 item 11: it was read as 8-bit RGBA and written back as colour, alpha cut to 256 levels."""
    pixels = _u16((13, 11, 2))
    src = tmp_path / "in.png"
    src.write_bytes(_ref_png16_write(pixels, interlace))
    loaded = load_image(src)
    assert loaded.is_gray and loaded.bit_depth == 16 and loaded.mode == "LA"
    for channel in range(3):
        np.testing.assert_array_equal(_as_uint(loaded.rgb, 16)[..., channel], pixels[..., 0])
    np.testing.assert_array_equal(_hwc(loaded.alpha)[..., 0], pixels[..., 1])

    changed = torch.rand_like(loaded.rgb)  # the network's colour output: written back as one gray plane
    out = tmp_path / "out.png"
    save_image(out, loaded, changed)
    assert _png_header(out.read_bytes()) == (11, 13, 16, 4)  # gray + alpha, 16 bits
    decoded, _ = _ref_png16_read(out.read_bytes())
    np.testing.assert_array_equal(decoded[..., 1], pixels[..., 1])  # alpha untouched, all 16 bits
    luma = _hwc(changed) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_array_equal(decoded[..., 0], np.rint(luma * 65535).astype(np.uint16))
    assert (decoded[..., 0] % 257 != 0).any()  # not 8-bit values widened
    again = load_image(out)
    assert (again.mode, again.bit_depth) == ("LA", 16)


def test_16bit_gray_alpha_to_tiff_is_16bit_gray_alpha(tmp_path: Path) -> None:
    """The TIFF every TIFF reader expects (Pillow cannot open one: it is checked byte for byte instead)."""
    tifffile = pytest.importorskip("tifffile")
    pixels = _u16((9, 7, 2))
    src = tmp_path / "in.png"
    src.write_bytes(_ref_png16_write(pixels))
    loaded = load_image(src)
    loaded.icc_profile = _srgb_icc()
    out = tmp_path / "out.tif"
    save_image(out, loaded, loaded.rgb)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.samplesperpixel == 2
        assert page.extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,) and page.dtype == np.uint16
        np.testing.assert_array_equal(tif.asarray(), pixels)
        assert page.tags[34675].value == loaded.icc_profile


def _frames(n: int, mode: str = "RGB") -> list[Image.Image]:
    return [Image.fromarray(_u8((10, 12, 3))).convert(mode) for _ in range(n)]


MULTI_FRAME = {
    "gif": ("anim.gif", {"duration": 80, "loop": 0}, "an animated image", "P"),
    "webp": ("anim.webp", {"duration": 80}, "an animated image", "RGB"),
    "apng": ("anim.png", {"duration": 80}, "an animated image", "RGB"),
    "tiff": ("pages.tif", {}, "a multi-page TIFF", "RGB"),
}


@pytest.mark.parametrize("kind", list(MULTI_FRAME))
def test_animated_and_multi_page_files_are_refused(tmp_path: Path, kind: str) -> None:
    """Issue #20 item 12: only the first frame used to be deblurred, silently."""
    name, options, what, mode = MULTI_FRAME[kind]
    src = tmp_path / name
    first, *rest = _frames(3, mode)
    first.save(src, save_all=True, append_images=rest, **options)
    message = f"{src} is {what} (3 frames); msdn deblurs still photos: extract the frames first"
    for read in (load_image, images.probe_image):
        with pytest.raises(MsdnError) as e:
            read(src)
        assert _one_line_error(e) == message
    first.save(tmp_path / f"one{src.suffix}", save_all=True, append_images=[], **options)  # one frame: a still
    assert load_image(tmp_path / f"one{src.suffix}").rgb.shape == (1, 3, 10, 12)


def test_a_jpeg_with_preview_frames_is_a_still(tmp_path: Path) -> None:
    """MPO (a phone's JPEG with a preview or depth frame, a stereo camera's pair): the first frame is the photo."""
    first, second = _frames(2)
    src = tmp_path / "photo.jpg"
    first.save(src, format="MPO", save_all=True, append_images=[second])
    with Image.open(src) as im:
        assert im.format == "MPO" and im.n_frames == 2
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(_as_uint(load_image(src).rgb, 8), expected)


def test_8bit_grayscale_stays_grayscale(tmp_path: Path) -> None:
    gray = _u8((8, 10))
    src = tmp_path / "in.png"
    Image.fromarray(gray, mode="L").save(src)
    loaded = load_image(src)
    assert loaded.is_gray and loaded.bit_depth == 8
    out = tmp_path / "out.jpg"
    save_image(out, loaded, loaded.rgb)
    with Image.open(out) as im:
        assert im.mode == "L"
    save_image(tmp_path / "out.png", loaded, loaded.rgb)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), gray)
    # a deblurred (no longer exactly gray) result is written with Pillow's own luma weights
    colour = torch.rand(1, 3, 8, 10)
    save_image(tmp_path / "mixed.png", loaded, colour)
    expected = np.asarray(to_pil(colour).convert("L")).astype(int)
    with Image.open(tmp_path / "mixed.png") as im:
        assert np.abs(np.asarray(im).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_carried_through_byte_for_byte(tmp_path: Path, mode: str) -> None:
    pixels = _u8((12, 14, len(mode)))
    src = tmp_path / "in.png"
    Image.fromarray(pixels, mode=mode).save(src)
    loaded = load_image(src)
    assert loaded.alpha is not None and loaded.alpha.shape == (1, 1, 12, 14)
    changed = torch.rand_like(loaded.rgb)  # whatever the network does to the colour...
    for ext in (".png", ".tif", ".webp"):
        out = tmp_path / f"out{ext}"
        save_image(out, loaded, changed, quality=100)
        with Image.open(out) as im:
            assert im.mode == (mode if ext != ".webp" else "RGBA")  # WebP has no gray + alpha mode
            np.testing.assert_array_equal(np.asarray(im)[..., -1], pixels[..., -1])  # ...alpha is untouched
    save_image(tmp_path / "out.jpg", loaded, changed)  # JPEG has no alpha: dropped, not an error
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == ("RGB" if mode == "RGBA" else "L")


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    index = RNG.integers(0, 4, (6, 7), dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    src = tmp_path / "in.png"
    im.save(src, transparency=2)
    loaded = load_image(src)
    expected = np.asarray(Image.open(src).convert("RGBA"))
    assert loaded.mode == "P"
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 8), expected[..., :3])
    np.testing.assert_array_equal(_hwc(loaded.alpha)[..., 0], expected[..., 3])
    assert set(np.unique(expected[..., 3])) <= {0, 255} and (expected[..., 3] == 0).any()


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    cmyk = _u8((8, 8, 4))
    src = tmp_path / "in.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(src, quality=100)
    loaded = load_image(src)
    assert loaded.mode == "CMYK" and loaded.icc_profile is None
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 8), np.asarray(Image.open(src).convert("RGB")))
    save_image(tmp_path / "out.png", loaded, loaded.rgb)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGB"


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_icc_and_exif_are_preserved(tmp_path: Path, ext: str) -> None:
    icc, exif = _srgb_icc(), _exif(make="KeepMe")
    src = tmp_path / "in.jpg"
    Image.fromarray(_u8((16, 16, 3))).save(src, icc_profile=icc, exif=exif)
    loaded = load_image(src)
    assert loaded.icc_profile == icc
    out = tmp_path / f"out{ext}"
    save_image(out, loaded, loaded.rgb)
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x010F) == "KeepMe"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_reset(tmp_path: Path, orientation: int) -> None:
    pixels = _u8((5, 8, 3))  # not square, so rotations change the shape
    src = tmp_path / "in.png"
    Image.fromarray(pixels).save(src, exif=_exif(orientation))
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    loaded = load_image(src)
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 8), expected)
    out = tmp_path / "out.jpg"
    save_image(out, loaded, loaded.rgb)
    with Image.open(out) as im:
        assert im.size == (expected.shape[1], expected.shape[0])
        assert im.getexif().get(0x0112) == 1
        assert im.getexif().get(0x010F) == "TestCam"


def test_16bit_exif_orientation(tmp_path: Path) -> None:
    """Orientation also applies on the double-decode 16-bit path (TIFF orientation tag)."""
    tifffile = pytest.importorskip("tifffile")
    pixels = _u16((4, 6, 3))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, pixels, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    loaded = load_image(src)
    np.testing.assert_array_equal(_as_uint(loaded.rgb, 16), np.rot90(pixels, -1))


def test_tensor_helpers_and_save_rgb(tmp_path: Path) -> None:
    pixels = _u8((6, 9, 3))
    t = to_tensor(Image.fromarray(pixels))
    assert t.shape == (1, 3, 6, 9) and t.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(to_pil(t)), pixels)
    np.testing.assert_array_equal(np.asarray(to_pil(t[0])), pixels)
    gray16 = to_tensor(Image.fromarray(np.full((2, 3), 65535, np.uint16)))
    assert torch.equal(gray16, torch.ones(1, 3, 2, 3))
    save_rgb(tmp_path / "strip.png", t)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "strip.png")), pixels)


# --- bad input ------------------------------------------------------------------------------------


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MsdnError) as e:
        load_image(tmp_path / "nope.jpg")
    assert "no such file" in _one_line_error(e)


def test_directory_given(tmp_path: Path) -> None:
    with pytest.raises(MsdnError) as e:
        load_image(tmp_path)
    assert "is a directory" in _one_line_error(e) and "deblur-dir" in str(e.value)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").touch()
    with pytest.raises(MsdnError) as e:
        load_image(tmp_path / "empty.png")
    assert "empty (0 bytes)" in _one_line_error(e)


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("hello, not a photo\n" * 20)
    with pytest.raises(MsdnError) as e:
        load_image(tmp_path / "notes.jpg")
    assert "not an image" in _one_line_error(e)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_image(tmp_path: Path, ext: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(_u8((64, 64, 3))).save(buf, format="JPEG" if ext == ".jpg" else "PNG")
    src = tmp_path / f"cut{ext}"
    src.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MsdnError) as e:
        load_image(src)
    assert "truncated or corrupt" in _one_line_error(e)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_many_pixels_is_refused_from_the_header(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a header promising 60000 x 60000 pixels and no pixel data: decoding would fail, so this error
    # can only come from the size check made before decoding
    bomb = tmp_path / "bomb.png"
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"junk") + chunk(b"IEND", b""))
    with pytest.raises(MsdnError) as e:
        load_image(bomb)
    assert "over the limit" in _one_line_error(e) and "--max-pixels" in str(e.value)

    small = tmp_path / "small.png"
    Image.fromarray(_u8((10, 10, 3))).save(small)
    with pytest.raises(MsdnError, match="100 pixels, over the limit of 99"):
        load_image(small, max_pixels=99)
    assert load_image(small, max_pixels=100).rgb.shape == (1, 3, 10, 10)


def test_pillow_decompression_bomb_error_becomes_msdn_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "x.png"
    Image.fromarray(_u8((4, 4, 3))).save(src)

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (1 pixels) exceeds limit")

    monkeypatch.setattr(images.Image, "open", bomb)
    with pytest.raises(MsdnError) as e:
        load_image(src)
    assert "exceeds limit" in _one_line_error(e)


def test_pillow_limit_is_restored(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    src = tmp_path / "x.png"
    Image.fromarray(_u8((4, 4, 3))).save(src)
    load_image(src, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == before


def _loaded(h: int = 4, w: int = 5) -> LoadedImage:
    return LoadedImage(pixels=torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8), alpha=None, bit_depth=8,
                       mode="RGB")


def test_unknown_output_extension(tmp_path: Path) -> None:
    with pytest.raises(MsdnError) as e:
        save_image(tmp_path / "out.xyz", _loaded(), _loaded().rgb)
    assert "unknown image extension .xyz" in _one_line_error(e)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_unwritable_output_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _loaded()
    with pytest.raises(MsdnError) as e:
        save_image(tmp_path / "no" / "such" / "out.png", loaded, loaded.rgb)
    assert "does not exist" in _one_line_error(e)
    # permission bits do not stop root, so ask the access check directly what it would see
    monkeypatch.setattr(images.os, "access", lambda path, mode: False)
    with pytest.raises(MsdnError) as e:
        save_image(tmp_path / "out.png", loaded, loaded.rgb)
    assert "not writable" in _one_line_error(e)


def test_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _loaded(32, 32)
    target = tmp_path / "out.png"
    target.write_bytes(b"previous contents")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half a PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(MsdnError) as e:
        save_image(target, loaded, loaded.rgb)
    assert "No space left on device" in _one_line_error(e)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert target.read_bytes() == b"previous contents"
