"""File and folder rules shared by `msdn deblur` and `msdn deblur-dir`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deblur_cli.errors import MsdnError
from deblur_cli.inference.pipeline import (DeblurSettings, check_output, deblur_directory, default_output, default_output_dir,
                                 parse_amp, parse_extensions, plan_directory, record_output)


def _image(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_default_output_names() -> None:
    assert default_output(Path("/a/b/photo.jpg")) == Path("/a/b/photo_deblurred.png")
    assert default_output_dir(Path("/a/photos")) == Path("/a/photos_deblurred")


def test_check_output_rules(tmp_path: Path) -> None:
    src = _image(tmp_path / "in.png")
    check_output(src, tmp_path / "out.jpg")
    with pytest.raises(MsdnError, match="refusing to write over the input"):
        check_output(src, tmp_path / "." / "in.png", overwrite=True)
    link = tmp_path / "hard.png"
    os.link(src, link)
    with pytest.raises(MsdnError, match="refusing to write over the input"):
        check_output(src, link, overwrite=True)
    (tmp_path / "taken.png").write_bytes(b"x")
    with pytest.raises(MsdnError, match="already exists; pass --overwrite"):
        check_output(src, tmp_path / "taken.png")
    check_output(src, tmp_path / "taken.png", overwrite=True)
    with pytest.raises(MsdnError, match="unknown image extension"):
        check_output(src, tmp_path / "out.gif")
    with pytest.raises(MsdnError, match="does not exist"):
        check_output(src, tmp_path / "missing" / "out.png")


def test_settings_and_option_parsing() -> None:
    assert parse_amp("none") is None and parse_amp("BF16") == "bf16"
    with pytest.raises(MsdnError, match="unknown --amp"):
        parse_amp("int8")
    with pytest.raises(MsdnError, match="overlap"):
        DeblurSettings(tile=32, overlap=32)
    with pytest.raises(MsdnError, match="--quality"):
        DeblurSettings(quality=0)
    with pytest.raises(MsdnError, match="--batch-size"):
        DeblurSettings(batch_size=0)
    assert parse_extensions("JPG, .png") == {".jpg", ".png"}
    with pytest.raises(MsdnError, match="gif"):
        parse_extensions("jpg,gif")


def test_plan_mirrors_filters_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _image(root / "a.jpg")
    _image(root / "b.png")
    _image(root / "sub" / "c.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".a.tmp-123.png").write_bytes(b"half-written temporary")
    out = tmp_path / "out"
    _image(out / "b.png")  # an earlier run's output

    flat = plan_directory(root, out)
    assert [(j.source.name, j.target, j.exists) for j in flat] == [
        ("a.jpg", out.resolve() / "a.jpg", False), ("b.png", out.resolve() / "b.png", True)]
    with pytest.raises(MsdnError, match="not an unchanged output of an earlier msdn deblur-dir"):
        plan_directory(root, out, overwrite=True)  # msdn did not write out/b.png: never replaced
    record_output(out.resolve(), out.resolve() / "b.png")
    assert [j.exists for j in plan_directory(root, out, overwrite=True)] == [False, False]

    deep = plan_directory(root, out, recursive=True, extensions=parse_extensions("png"), fmt="webp")
    assert [j.target.relative_to(out.resolve()) for j in deep] == [Path("b.webp"), Path("sub/c.webp")]

    with pytest.raises(MsdnError, match="no images .* found"):
        plan_directory(root / "sub", out, extensions=parse_extensions("jpg"))
    with pytest.raises(MsdnError, match="no such directory"):
        plan_directory(tmp_path / "nope", out)
    with pytest.raises(MsdnError, match="output directory is the input directory"):
        plan_directory(root, root)


def test_outputs_inside_the_input_folder_are_never_inputs(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _image(root / "a.png")
    _image(root / "done" / "a.png")  # OUTDIR inside DIR, from an earlier run
    jobs = plan_directory(root, root / "done", recursive=True)
    assert [j.source for j in jobs] == [root / "a.png"]


def test_same_output_name_is_a_clash(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _image(root / "a.jpg")
    _image(root / "a.png")
    jobs = plan_directory(root, tmp_path / "out", fmt="png")
    assert jobs[0].clash is None and jobs[1].clash == root / "a.jpg"


def test_deblur_directory_goes_on_past_a_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deblur_cli.inference import pipeline

    from deblur_cli.imaging.planes import to_float

    # stand-in network: inverts the colours and hands the rows to `finish`, as `deblur` does
    monkeypatch.setattr(pipeline, "deblur", lambda model, image, finish, **kw: finish(1.0 - to_float(image), 0))
    root = tmp_path / "photos"
    _image(root / "a.png")
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _image(root / "c.png")
    out = tmp_path / "out"
    seen = []
    report = deblur_directory(torch.nn.Identity(), plan_directory(root, out), on_file=lambda i, job: seen.append(i))
    assert seen == [0, 1, 2]
    assert report.processed == [root / "a.png", root / "c.png"] and report.skipped == []
    [(bad, reason)] = report.failed
    assert bad == root / "b.png" and "b.png" in reason and "\n" not in reason
    original = np.asarray(Image.open(root / "c.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "c.png")), 255 - original)
    assert not (out / "b.png").exists()


def test_output_folder_above_the_input_folder(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _image(root / "a.png")
    _image(root / "photos" / "a.png")
    # `-o ..`: the inputs lie inside OUTDIR but are still inputs (this used to find "no images")
    jobs = plan_directory(root, tmp_path)
    assert [(j.source, j.target) for j in jobs] == [(root / "a.png", tmp_path.resolve() / "a.png")]
    # recursively, photos/photos/a.png would go to photos/a.png, an input: refused before any work
    with pytest.raises(MsdnError, match="would replace an input image"):
        plan_directory(root, tmp_path, recursive=True, overwrite=True)


def _shifting_net() -> torch.nn.Module:
    """A fixed 3x3 convolution that mixes the channels, so gray photos come out coloured and need the mix."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid())
    return net.eval()


@pytest.mark.parametrize("mode, bits, ext", [("RGB", 8, ".png"), ("L", 8, ".jpg"), ("LA", 8, ".png"),
                                             ("RGBA", 8, ".jpg"), ("RGB", 16, ".png"), ("RGB", 16, ".jpg"),
                                             ("LA", 16, ".png"), ("L", 16, ".tif")])
def test_banded_output_is_the_whole_float_image_saved(tmp_path: Path, mode: str, bits: int, ext: str) -> None:
    """deblur_file never holds the photo as float, yet writes the bytes the whole-float path writes: the
    colour math (gray mix, alpha, JPEG's white backdrop, rounding) runs band by band, per pixel."""
    from deblur_cli.imaging.codec16 import png16
    from deblur_cli.imaging.images import load_image, save_image
    from deblur_cli.inference.engine import deblur
    from deblur_cli.inference.pipeline import deblur_file

    rng = np.random.default_rng(bits)
    h, w, channels = 150, 70, len(mode)
    pixels = rng.integers(0, 2**bits, (h, w, channels), dtype=np.uint16 if bits == 16 else np.uint8)
    src = tmp_path / "in.png"
    if bits == 16 and channels > 1:
        src.write_bytes(png16(pixels, None, None))  # 16-bit RGB or gray + alpha: beyond Pillow
    else:
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(src)
    settings = DeblurSettings(tile=48, overlap=16, batch_size=3, amp=None)
    deblur_file(_shifting_net(), src, tmp_path / f"banded{ext}", settings)
    loaded = load_image(src)
    whole = deblur(_shifting_net(), loaded.rgb, tile=48, overlap=16, batch_size=3)
    save_image(tmp_path / f"whole{ext}", loaded, whole)
    assert (tmp_path / f"banded{ext}").read_bytes() == (tmp_path / f"whole{ext}").read_bytes()
