"""`msdn deblur` and `msdn deblur-dir` end to end, with a tiny random generator saved to a temp file."""

from __future__ import annotations

import io
import struct
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deblur_cli import cli
from deblur_cli.imaging.images import load_image
from deblur_cli.inference.engine import deblur, prepare_model, resolve_amp
from deblur_cli.weights.weightfile import build_generator, load_weights_file

FAST = ["--tile", "64", "--overlap", "16", "--device", "cpu"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli.console, "_width", 240)  # no wrapping inside table cells we assert on
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # never find (or download) real weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _photo(path: Path, h: int = 70, w: int = 90, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _reference(weights: Path, src: Path) -> np.ndarray:
    model = prepare_model(build_generator(*load_weights_file(weights)), torch.device("cpu"))
    # at the precision the CLI's --amp auto picks on this machine (bf16 where the CPU has it natively)
    out = deblur(model, load_image(src).rgb, tile=64, overlap=16, amp=resolve_amp("auto", torch.device("cpu")))
    return np.clip(np.rint(out[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)


def test_deblur_writes_the_network_output_beside_the_input(tmp_path: Path, weights: Path) -> None:
    src = _photo(tmp_path / "shot.jpg")
    before = src.read_bytes()
    code, out = run("deblur", src, "--weights", weights, *FAST)
    assert code == 0, out
    target = tmp_path / "shot_deblurred.png"
    assert "Wrote" in out and "shot_deblurred.png" in out and "90x70" in out
    written = np.asarray(Image.open(target))
    np.testing.assert_array_equal(written, _reference(weights, src))
    assert np.abs(written.astype(int) - np.asarray(Image.open(src)).astype(int)).mean() > 1  # not a copy
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.jpg", "shot_deblurred.png"]  # no temporaries


def test_off_a_terminal_a_long_photo_prints_plain_progress_lines(tmp_path: Path, weights: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from deblur_cli.commands import common

    src = _photo(tmp_path / "shot.png", 200, 200)  # 5 x 5 tiles of 64
    quick = CliRunner().invoke(cli.app, ["deblur", str(src), "--weights", str(weights), *FAST])
    assert quick.exit_code == 0 and quick.stderr == ""  # a quick photo: nothing but the result line
    monkeypatch.setattr(common, "PLAIN_AFTER_S", 0.0)  # as if every tile took long
    monkeypatch.setattr(common, "PLAIN_EVERY_S", 0.0)
    slow = CliRunner().invoke(cli.app, ["deblur", str(src), "--weights", str(weights), *FAST, "--overwrite"])
    assert slow.exit_code == 0, slow.output
    lines = slow.stderr.splitlines()
    assert lines[0].startswith("Deblurring shot.png: ") and lines[-1] == "Deblurring shot.png: 25/25 tiles (100%)"
    assert all(re.fullmatch(r"Deblurring shot\.png: \d+/25 tiles \(\d+%\)", line) for line in lines)


def test_deblur_output_format_and_16_bits(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "deep.tif"
    pixels = np.random.default_rng(3).integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    pytest.importorskip("tifffile").imwrite(src, pixels, photometric="rgb")
    code, out = run("deblur", src, "-o", tmp_path / "deep.png", "--weights", weights, *FAST)
    assert code == 0, out
    ihdr = (tmp_path / "deep.png").read_bytes()[16:26]
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", ihdr)
    assert (width, height, bit_depth, colour_type) == (50, 40, 16, 2)
    code, out = run("deblur", src, "-o", tmp_path / "deep.jpg", "--quality", "80", "--weights", weights, *FAST)
    assert code == 0 and Image.open(tmp_path / "deep.jpg").format == "JPEG"


def _gray_alpha16_png(path: Path, h: int, w: int) -> np.ndarray:
    """A 16-bit gray + alpha PNG (colour type 4), which Pillow cannot write: (h, w, 2) uint16 pixels."""
    import zlib

    pixels = np.random.default_rng(5).integers(0, 65536, (h, w, 2), dtype=np.uint16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return pixels


def test_16bit_gray_alpha_stays_16bit_gray_alpha(tmp_path: Path, weights: Path) -> None:
    """Issue #20 item 11: it came out 8-bit RGBA with R, G, B unequal and alpha cut to 256 levels."""
    src = tmp_path / "ga.png"
    pixels = _gray_alpha16_png(src, 40, 50)
    code, out = run("deblur", src, "--weights", weights, *FAST)
    assert code == 0, out
    data = (tmp_path / "ga_deblurred.png").read_bytes()
    assert struct.unpack(">IIBB", data[16:26]) == (50, 40, 16, 4)  # IHDR: gray + alpha, 16 bits
    result = load_image(tmp_path / "ga_deblurred.png")
    assert (result.mode, result.bit_depth) == ("LA", 16)
    gray = np.rint(result.rgb[0].numpy() * 65535).astype(np.uint16)
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all() and (gray[0] % 257 != 0).any()
    assert np.abs(gray[0].astype(int) - pixels[..., 0]).mean() > 100  # deblurred, not copied
    np.testing.assert_array_equal(result.alpha[0, 0].numpy(), pixels[..., 1])


def test_grayscale_stays_grayscale(tmp_path: Path, weights: Path) -> None:
    src = _photo(tmp_path / "gray.png", mode="L")
    code, out = run("deblur", src, "--weights", weights, *FAST)
    assert code == 0, out
    assert Image.open(tmp_path / "gray_deblurred.png").mode == "L"


def test_no_overwrite_without_flag(tmp_path: Path, weights: Path) -> None:
    src = _photo(tmp_path / "a.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    code, out = run("deblur", src, "-o", target, "--weights", weights, *FAST)
    assert code != 0 and "already exists; pass --overwrite" in out
    assert target.read_bytes() == b"keep me"
    code, out = run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    assert code == 0, out
    assert Image.open(target).size == (90, 70)


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_input_is_never_overwritten(tmp_path: Path, weights: Path, spelling: str) -> None:
    src = _photo(tmp_path / "a.png")
    before = src.read_bytes()
    target = src if spelling == "same" else tmp_path / "." / "a.png"
    code, out = run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    assert code != 0 and "refusing to write over the input" in out
    assert src.read_bytes() == before


def test_default_model_deblurs_offline_without_weights(tmp_path: Path) -> None:
    """A fresh clone: no --weights, no network; the bundled default model changes the photo."""
    src = _photo(tmp_path / "a.png")
    code, out = run("deblur", src, "--offline", *FAST)
    assert code == 0, out
    result = np.asarray(Image.open(tmp_path / "a_deblurred.png")).astype(int)
    assert result.shape == (70, 90, 3) and np.abs(result - np.asarray(Image.open(src)).astype(int)).mean() > 0.5


def test_no_default_model_gives_the_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deblur_cli.weights import manifest

    empty = tmp_path / "weights_manifest.json"
    empty.write_text('{"schema_version": 1, "default": null, "models": []}')
    monkeypatch.setattr(manifest, "MANIFEST_PATH", empty)
    src = _photo(tmp_path / "a.png")
    code, out = run("deblur", src, "--offline", *FAST)
    assert code == 1
    assert "names no default model" in out and "`msdn weights list`" in out and "--weights PATH" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "a_deblurred.png").exists()


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[:700])


BAD_CASES = {
    "missing": (lambda d: d / "nope.jpg", [], "no such file"),
    "directory": (lambda d: d, [], "is a directory"),
    "not an image": (lambda d: (d / "x.jpg").write_text("text " * 50) and d / "x.jpg", [], "not an image"),
    "empty": (lambda d: (d / "e.png").touch() or d / "e.png", [], "empty (0 bytes)"),
    "truncated": (lambda d: _truncated_jpeg(d / "t.jpg") or d / "t.jpg", [], "truncated or corrupt"),
    "too big": (lambda d: _photo(d / "big.png"), ["--max-pixels", "1000"], "over the limit of 1,000"),
    "output extension": (lambda d: _photo(d / "a.png"), ["-o", "out.xyz"], "unknown image extension .xyz"),
    "output dir": (lambda d: _photo(d / "a.png"), ["-o", "no/such/dir/out.png"], "does not exist"),
    "amp": (lambda d: _photo(d / "a.png"), ["--amp", "int4"], "unknown --amp"),
    "tiles": (lambda d: _photo(d / "a.png"), ["--tile", "32", "--overlap", "40"], "overlap"),
    "device": (lambda d: _photo(d / "a.png"), ["--device", "tpu"], "unknown device"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, weights: Path, case: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    make, extra, expected = BAD_CASES[case]
    monkeypatch.chdir(tmp_path)
    src = make(tmp_path)
    code, out = run("deblur", src, "--weights", weights, *FAST, *extra)
    assert code != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), out
    assert expected in out
    leftovers = [p.name for p in tmp_path.rglob("*") if "tmp-" in p.name or p.name.endswith("_deblurred.png")]
    assert leftovers == []


def test_deblur_dir_goes_on_past_a_bad_file(tmp_path: Path, weights: Path) -> None:
    root = tmp_path / "photos"
    _photo(root / "a.jpg")
    _photo(root / "sub" / "b.png", mode="L")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "readme.txt").write_text("ignored")
    code, out = run("deblur-dir", root, "--recursive", "--weights", weights, *FAST)
    assert code == 1
    outdir = tmp_path / "photos_deblurred"
    assert (outdir / "a.jpg").is_file() and Image.open(outdir / "a.jpg").format == "JPEG"
    assert Image.open(outdir / "sub" / "b.png").mode == "L"
    assert not (outdir / "broken.png").exists()
    assert "processed" in out and "failed" in out and "broken.png" in out and "Failures" in out
    summary = next(line for line in out.splitlines() if line.count("│") == 5)
    assert [cell.strip() for cell in summary.split("│")[1:5]] == ["2", "0", "1", "1"]  # readme.txt left out

    # a second run skips what is done; --format png writes PNGs next to them
    (root / "broken.png").unlink()
    code, out = run("deblur-dir", root, "-r", "--weights", weights, *FAST)
    assert code == 0, out
    summary = next(line for line in out.splitlines() if line.count("│") == 5)
    assert [cell.strip() for cell in summary.split("│")[1:5]] == ["0", "2", "1", "0"]
    code, out = run("deblur-dir", root, "-r", "--format", "png", "--ext", "jpg", "--weights", weights, *FAST)
    assert code == 0, out
    assert (outdir / "a.png").is_file() and not (outdir / "sub" / "b.png.png").exists()


def test_deblur_dir_output_inside_input_is_not_reprocessed(tmp_path: Path, weights: Path) -> None:
    root = tmp_path / "photos"
    _photo(root / "a.png", 30, 40)
    inner = root / "deblurred"
    code, out = run("deblur-dir", root, "-o", inner, "-r", "--weights", weights, *FAST)
    assert code == 0, out
    code, out = run("deblur-dir", root, "-o", inner, "-r", "--overwrite", "--weights", weights, *FAST)
    assert code == 0, out
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == ["a.png", "deblurred/a.png"]


def test_deblur_dir_errors(tmp_path: Path, weights: Path) -> None:
    code, out = run("deblur-dir", tmp_path / "nope", "--weights", weights)
    assert code == 1 and "no such directory" in out
    (tmp_path / "empty").mkdir()
    code, out = run("deblur-dir", tmp_path / "empty", "--weights", weights)
    assert code == 1 and "no images" in out
