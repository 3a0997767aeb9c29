"""HEIC and AVIF, the formats phones save (issue #21 section 3): read and written through the CLI with EXIF,
orientation and ICC kept; without the `formats` extra, one line naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, features
from typer.testing import CliRunner

from deblur_cli import cli
from deblur_cli.imaging import heif
from deblur_cli.imaging.images import load_image

FAST = ["--tile", "64", "--overlap", "16", "--device", "cpu"]
EXTRA = "pip install 'msdn-deblur[formats]'"
MAKE, ORIENTATION = 0x010F, 0x0112


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli.console, "_width", 240)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # once: it carries its creation time


def _scene(h: int = 40, w: int = 56) -> np.ndarray:
    """Smooth, so a lossy codec keeps it close enough to tell orientations apart."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


def _codec(ext: str) -> None:
    """Skip unless this Pillow can write `ext` (pillow-heif for HEIC; Pillow's own libavif for AVIF)."""
    if ext == "heic":
        pytest.importorskip("pillow_heif")
    elif not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    heif.require_writer(Path(f"x.{ext}"))


def _phone_photo(path: Path, orientation: int = 6) -> np.ndarray:
    """A photo as a phone saves it: pixels as the sensor saw them, EXIF orientation, an ICC profile."""
    exif = Image.Exif()
    exif[MAKE], exif[ORIENTATION] = "PhoneCam", orientation
    scene = _scene()
    Image.fromarray(scene).save(path, quality=95, exif=exif.tobytes(), icc_profile=ICC)
    return scene


@pytest.mark.parametrize("ext", ["heic", "avif"])
def test_read_and_written_with_exif_orientation_and_icc(tmp_path: Path, weights: Path, ext: str) -> None:
    _codec(ext)
    src = tmp_path / f"phone.{ext}"
    scene = _phone_photo(src)
    loaded = load_image(src)  # upright once: rotated 90 degrees clockwise (orientation 6), not twice
    assert loaded.rgb.shape == (1, 3, 56, 40) and loaded.icc_profile == ICC
    upright = np.rint(loaded.rgb[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(upright - np.rot90(scene, -1)).mean() < 4
    with Image.open(src) as im:
        np.testing.assert_array_equal(upright, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))

    for out in (tmp_path / f"sharp.{ext}", tmp_path / "phone_deblurred.png"):
        code, stdout, err = run("deblur", src, *(["-o", out] if out.suffix != ".png" else []), "--weights", weights,
                                *FAST)
        assert code == 0, err
        assert stdout.startswith(f"Wrote {out} (40x56)")
        with Image.open(out) as im:
            assert im.format == {".heic": "HEIF", ".avif": "AVIF", ".png": "PNG"}[out.suffix]
            assert im.size == (40, 56) and im.info.get("icc_profile") == ICC
            exif = im.getexif()
            assert exif.get(MAKE) == "PhoneCam" and exif.get(ORIENTATION, 1) == 1  # upright: nothing left to turn
        assert load_image(out).rgb.shape == (1, 3, 56, 40)  # read back upright, not turned again


def test_deblur_dir_picks_them_up_by_extension(tmp_path: Path, weights: Path) -> None:
    _codec("heic")
    _codec("avif")
    root = tmp_path / "phone"
    root.mkdir()
    for name in ("a.heic", "b.HEIF", "c.avif", "d.jpg"):
        _phone_photo(root / name)
    code, stdout, err = run("deblur-dir", root, "-o", tmp_path / "out", "--weights", weights, *FAST)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == \
        ["a.heic", "b.HEIF", "c.avif", "d.jpg"]
    with Image.open(tmp_path / "out" / "a.heic") as im:
        assert im.format == "HEIF" and im.size == (40, 56) and im.getexif().get(MAKE) == "PhoneCam"
    code, stdout, err = run("deblur-dir", root, "-o", tmp_path / "png", "--format", "png", "--ext", "heic,avif",
                            "--weights", weights, *FAST)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "png").iterdir() if not p.name.startswith(".")) == ["a.png", "c.png"]


@pytest.fixture
def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if `msdn-deblur[formats]` were not installed and Pillow had no AVIF codec."""
    monkeypatch.setattr(heif, "_import", lambda name: None)
    monkeypatch.setattr(heif, "_native_avif", lambda: False)


def _heif_bytes(brand: bytes) -> bytes:
    """The start of a HEIF-family file (an ftyp box, then junk): refused before any decoder sees it."""
    return (24).to_bytes(4, "big") + b"ftyp" + brand + b"\0\0\0\0mif1" + brand + b"\0" * 64


def test_without_the_extra_each_file_gets_one_line(tmp_path: Path, weights: Path, no_extra: None) -> None:
    heic, avif, renamed = tmp_path / "IMG_0001.HEIC", tmp_path / "b.avif", tmp_path / "c.jpg"
    heic.write_bytes(_heif_bytes(b"heic"))
    avif.write_bytes(_heif_bytes(b"avif"))
    renamed.write_bytes(_heif_bytes(b"heic"))  # a HEIC a transfer tool renamed: told the same, not "not an image"
    jpg = tmp_path / "d.jpg"
    Image.fromarray(_scene()).save(jpg)
    expected = {heic: f"Error: {heic}: reading HEIC needs the optional formats extra: {EXTRA}",
                avif: f"Error: {avif}: reading AVIF needs the optional formats extra: {EXTRA}",
                renamed: f"Error: {renamed}: reading HEIC needs the optional formats extra: {EXTRA}"}
    for src, message in expected.items():
        code, stdout, err = run("deblur", src, "--weights", weights, *FAST)
        assert code == 1 and error_line(err) == message and stdout == ""
    for ext, name in (("heic", "HEIC"), ("avif", "AVIF")):
        out = tmp_path / f"out.{ext}"
        code, stdout, err = run("deblur", jpg, "-o", out, "--weights", weights, *FAST)
        assert code == 1 and error_line(err) == f"Error: cannot write {out}: writing {name} needs the optional " \
                                                f"formats extra: {EXTRA}"
        assert not out.exists()


def test_without_the_extra_deblur_dir_reports_and_skips(tmp_path: Path, weights: Path, no_extra: None) -> None:
    root = tmp_path / "phone"
    root.mkdir()
    (root / "a.heic").write_bytes(_heif_bytes(b"heic"))
    (root / "b.avif").write_bytes(_heif_bytes(b"avif"))
    Image.fromarray(_scene()).save(root / "c.jpg")
    out = tmp_path / "out"
    code, stdout, err = run("deblur-dir", root, "-o", out, "--weights", weights, *FAST)
    assert code == 1 and stdout.splitlines() == [f"Wrote {out / 'c.jpg'}"]
    rows = " ".join(err.split())
    for name, kind in (("a.heic", "HEIC"), ("b.avif", "AVIF")):
        src = root / name
        assert f"{src} │ {src}: reading {kind} needs the optional formats extra: {EXTRA}" in rows, rows
    assert re.search(r"│ +1 │ +0 │ +0 │ +2 │", rows), rows
    code, stdout, err = run("deblur-dir", root, "-o", tmp_path / "out2", "--format", "heic", "--weights", weights)
    assert code == 1 and error_line(err) == f"Error: --format heic: writing HEIC needs the optional formats extra: " \
                                            f"{EXTRA}"


def test_the_core_never_imports_the_optional_codecs(tmp_path: Path) -> None:
    """pillow-heif is imported only when a HEIC file is met: JPEG/PNG work is as it was without the extra."""
    script = (f"import sys; from deblur_cli import cli; from deblur_cli.inference import pipeline; from deblur_cli.imaging.images import load_image, save_image; "
              f"from PIL import Image; Image.new('RGB', (8, 6)).save({str(tmp_path / 'a.jpg')!r}); "
              f"x = load_image({str(tmp_path / 'a.jpg')!r}); save_image({str(tmp_path / 'b.png')!r}, x, x.rgb); "
              f"print(sorted(m for m in ('pillow_heif', 'pillow_avif') if m in sys.modules))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
