"""`msdn eval` and deblur_cli.evaluation.evaluate on small fixture sets built here, checked against scikit-image.

Fixtures: crops of scikit-image photos, blurred by a known horizontal box kernel and saved as PNG.
Every reference number is computed by scikit-image on the files as saved, independently of
deblur_cli.evaluation.metrics.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import uniform_filter1d
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from deblur_cli.cli import app
from deblur_cli.evaluation.datasets import Pair, discover
from deblur_cli.errors import MsdnError
from deblur_cli.evaluation.evaluate import Contender, check_outputs, evaluate, output_paths, side_by_side, unique_labels
from deblur_cli.nets.model import MSDN
from deblur_cli.weights.weightfile import save_weights
from conftest import TINY

PHOTOS = ("astronaut", "chelsea", "coffee")
runner = CliRunner()


# --- fixture helpers -----------------------------------------------------------------------------


def sharp_crop(i: int, h: int = 40, w: int = 56) -> np.ndarray:
    photo = getattr(data, PHOTOS[i % 3])()
    top, left = 60 + 17 * i, 80 + 23 * i
    return np.ascontiguousarray(photo[top:top + h, left:left + w])


def blur(img: np.ndarray, length: int = 7) -> np.ndarray:
    """The known kernel: a horizontal box of `length` pixels, as a camera shake would leave."""
    return np.round(uniform_filter1d(img.astype(np.float64), length, axis=1, mode="nearest")).astype(np.uint8)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def write_pair(blur_path: Path, sharp_path: Path, i: int, **size: int) -> None:
    sharp = sharp_crop(i, **size)
    write(sharp_path, sharp)
    write(blur_path, blur(sharp))


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def ref_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(target, pred, data_range=255))


def ref_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    return float(structural_similarity(pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=-1))


def tiny_weights(path: Path, seed: int = 0) -> Path:
    """A random tiny generator (tests only). Its head starts at zero, i.e. as the identity, so give the head
    random weights: the model's numbers must differ from the identity baseline's."""
    torch.manual_seed(seed)
    model = MSDN(TINY)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape) * 0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model.state_dict(), TINY)
    return path


def gopro(root: Path, sequences: dict[str, int], blur_folder: str = "blur", split: str = "test") -> Path:
    k = 0
    for seq, n in sequences.items():
        for j in range(n):
            name = f"{j:06d}.png"
            write_pair(root / split / seq / blur_folder / name, root / split / seq / "sharp" / name, k)
            k += 1
    return root


def run(*args: object) -> object:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    # CliRunner catches exceptions instead of printing tracebacks: a crash shows up only here
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def rows_of(report: dict, model: str) -> dict[tuple[str, str], dict]:
    return {(r["group"], r["name"]): r for r in report["rows"] if r["model"] == model}


# --- discovery -----------------------------------------------------------------------------------


def test_gopro_discovery_groups_by_sequence(tmp_path: Path) -> None:
    root = gopro(tmp_path / "GOPRO", {"GOPR0384_11_00": 2, "GOPR0385_11_01": 1})
    ds = discover(root)
    assert ds.layout == "gopro"
    assert [(p.group, p.name) for p in ds.pairs] == [
        ("GOPR0384_11_00", "000000"), ("GOPR0384_11_00", "000001"), ("GOPR0385_11_01", "000000")]
    assert all(p.blurred.parent.name == "blur" and p.sharp.parent.name == "sharp" for p in ds.pairs)
    # the split folder itself as ROOT, and the explicit layout, find the same pairs
    assert discover(root / "test").pairs == ds.pairs
    assert discover(root, "gopro").pairs == ds.pairs


def test_gopro_split_and_blur_gamma(tmp_path: Path) -> None:
    root = gopro(tmp_path / "G", {"A": 1}, split="test")
    gopro(root, {"B": 2}, split="train", blur_folder="blur_gamma")
    gopro(root, {"B": 2}, split="train")
    assert {p.group for p in discover(root).pairs} == {"A"}
    train = discover(root, split="train", blur_folder="blur_gamma")
    assert [p.group for p in train.pairs] == ["B", "B"]
    assert all(p.blurred.parent.name == "blur_gamma" for p in train.pairs)


def test_paired_and_kohler_layouts(tmp_path: Path) -> None:
    paired = tmp_path / "paired"
    write_pair(paired / "blur" / "a.png", paired / "sharp" / "a.png", 0)
    write_pair(paired / "blur" / "b.png", paired / "sharp" / "b.bmp", 1)  # matched by stem, not extension
    ds = discover(paired)
    assert ds.layout == "paired" and [(p.group, p.name) for p in ds.pairs] == [("", "a"), ("", "b")]

    kohler = tmp_path / "kohler"
    for img in (1, 2):
        sharp = sharp_crop(img)
        write(kohler / "sharp" / f"Image{img}.png", sharp)
        for k in (1, 2, 3):
            write(kohler / "blur" / f"Image{img}_{k}.png", blur(sharp, 3 + 2 * k))
    ds = discover(kohler)
    assert ds.layout == "kohler"
    assert [(p.group, p.name, p.sharp.name) for p in ds.pairs][:4] == [
        ("Image1", "Image1_1", "Image1.png"), ("Image1", "Image1_2", "Image1.png"),
        ("Image1", "Image1_3", "Image1.png"), ("Image2", "Image2_1", "Image2.png")]

    folders = tmp_path / "folders"
    write_pair(folders / "boat" / "kernel1.png", folders / "boat" / "sharp.png", 0)
    write(folders / "boat" / "kernel2.png", blur(sharp_crop(0), 11))
    write_pair(folders / "cat" / "blur" / "k1.png", folders / "cat" / "sharp.png", 1)
    ds = discover(folders)
    assert ds.layout == "kohler"
    assert [(p.group, p.name) for p in ds.pairs] == [("boat", "kernel1"), ("boat", "kernel2"), ("cat", "k1")]


@pytest.mark.parametrize("case, message", [
    ("missing", "dataset folder not found"),
    ("nothing", "cannot tell the layout"),
    ("no_pairs", "no blurred/sharp pairs found"),
    ("wrong_layout", "is not a GOPRO folder"),
    ("bad_layout", "unknown layout 'foo'"),
])
def test_unusable_folders_say_why(tmp_path: Path, case: str, message: str) -> None:
    root = tmp_path / "data"
    layout = "auto"
    if case == "nothing":
        write(root / "photos" / "x.png", sharp_crop(0))
    elif case == "no_pairs":
        write(root / "blur" / "x.png", sharp_crop(0))
        (root / "sharp").mkdir()
    elif case == "wrong_layout":
        write_pair(root / "blur" / "x.png", root / "sharp" / "x.png", 0)
        layout = "gopro"
    elif case == "bad_layout":
        root.mkdir()
        layout = "foo"
    with pytest.raises(MsdnError, match=message):
        discover(root, layout)
    result = run("eval", root, "--baseline", "identity", "--layout", layout)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_unpairable_files_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_pair(root / "blur" / "good.png", root / "sharp" / "good.png", 0)
    write(root / "blur" / "orphan.png", sharp_crop(1))
    write(root / "sharp" / "lonely.png", sharp_crop(2))
    write(root / "blur" / "twice.png", sharp_crop(0))
    write(root / "blur" / "twice.jpg", sharp_crop(0))
    write(root / "sharp" / "twice.png", sharp_crop(0))
    ds = discover(root)
    assert [p.name for p in ds.pairs] == ["good"]
    reasons = {p.path: p.reason for p in ds.problems}
    assert reasons["blur/orphan.png"] == "no sharp image with this name"
    assert reasons["sharp/lonely.png"] == "no blurred image with this name"
    assert "same name" in reasons["blur/twice.png"] or "same name" in reasons["blur/twice.jpg"]


# --- scores against scikit-image -----------------------------------------------------------------


def test_gopro_eval_matches_skimage_and_reports(tmp_path: Path) -> None:
    root = gopro(tmp_path / "GOPRO", {"SEQ_A": 2, "SEQ_B": 1})
    w = tiny_weights(tmp_path / "w" / "tiny.safetensors")
    out, js, cs = tmp_path / "out", tmp_path / "r.json", tmp_path / "r.csv"
    result = run("eval", root, "--weights", w, "--baseline", "identity", "--json", js, "--csv", cs,
                 "--save-images", out, "--device", "cpu", "--per-image")
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    assert report["models"] == ["identity", "w/tiny.safetensors"] and report["layout"] == "gopro"
    ident, model = rows_of(report, "identity"), rows_of(report, "w/tiny.safetensors")
    assert set(ident) == set(model) == {("SEQ_A", "000000"), ("SEQ_A", "000001"), ("SEQ_B", "000000")}
    for (seq, name), row in ident.items():
        blurred = read(root / "test" / seq / "blur" / f"{name}.png")
        sharp = read(root / "test" / seq / "sharp" / f"{name}.png")
        assert row["psnr"] == pytest.approx(ref_psnr(blurred, sharp), abs=1e-4)
        assert row["ssim"] == pytest.approx(ref_ssim(blurred, sharp), abs=1e-4)
        assert row["seconds"] == 0.0
        # the model's numbers are those of its saved output, recomputed by scikit-image
        saved = read(out / "w_tiny.safetensors" / seq / f"{name}.png")
        assert model[(seq, name)]["psnr"] == pytest.approx(ref_psnr(saved, sharp), abs=1e-4)
        assert model[(seq, name)]["ssim"] == pytest.approx(ref_ssim(saved, sharp), abs=1e-4)
        assert model[(seq, name)]["psnr"] != pytest.approx(row["psnr"], abs=1e-3)
        assert model[(seq, name)]["seconds"] > 0
        strip = read(out / "w_tiny.safetensors" / seq / f"{name}_strip.png")
        assert strip.shape == (sharp.shape[0], 3 * sharp.shape[1] + 8, 3)
        assert np.array_equal(strip[:, :sharp.shape[1]], blurred)
        assert np.array_equal(strip[:, -sharp.shape[1]:], sharp)
        assert np.array_equal(strip[:, sharp.shape[1] + 4:2 * sharp.shape[1] + 4], saved)
    assert not (out / "identity").exists()
    # summary: per-sequence and overall means of the per-image rows
    summary = {(s["model"], s["group"]): s for s in report["summary"]}
    assert summary[("identity", "SEQ_A")]["count"] == 2
    assert summary[("identity", None)]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in ident.values()]))
    assert summary[("w/tiny.safetensors", "SEQ_B")]["ssim"] == pytest.approx(model[("SEQ_B", "000000")]["ssim"])
    # CSV holds the same rows
    with cs.open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [tuple(r) for r in csv_rows[:1]] == [("model", "group", "name", "psnr", "ssim", "seconds", "psnr_aligned",
                                                 "ssim_aligned", "grad_ratio")]
    assert all(r["psnr_aligned"] == "" for r in csv_rows)  # no --align: no aligned scores
    assert len(csv_rows) == 6
    for r in csv_rows:
        ref = rows_of(report, r["model"])[(r["group"], r["name"])]
        assert float(r["psnr"]) == pytest.approx(ref["psnr"], abs=1e-9)
        assert float(r["ssim"]) == pytest.approx(ref["ssim"], abs=1e-9)
    # the printed tables: one line per sequence, the overall mean, the gain over the baseline
    text = result.output
    for word in ("SEQ_A", "SEQ_B", "overall", "identity", "tiny", "gain dB", "3 images scored, 0 skipped"):
        assert word in text
    overall = f"{summary[('identity', None)]['psnr']:.2f}"
    assert overall in text


def test_align_scores_the_best_shift_like_skimage(tmp_path: Path) -> None:
    """A 'deblurred' output that is the sharp photo moved by (2, -3) px: raw PSNR punishes the shift,
    aligned PSNR finds it, and both equal scikit-image on the crops a brute-force search picks."""
    root = tmp_path / "p"
    sharp = sharp_crop(0, h=60, w=70)
    moved = np.roll(sharp, (2, -3), axis=(0, 1))
    noise = np.random.default_rng(0).integers(-3, 4, moved.shape)
    moved = np.clip(moved.astype(int) + noise, 0, 255).astype(np.uint8)  # not identical: PSNR stays finite
    write(root / "sharp" / "a.png", sharp)
    write(root / "blur" / "a.png", moved)
    report = evaluate(discover(root), [Contender("identity", None)], align=4)
    (row,) = report.rows
    r, h, w = 4, 60, 70
    target = sharp[r:h - r, r:w - r]
    best = max((ref_psnr(moved[r + dy:h - r + dy, r + dx:w - r + dx], target), dy, dx)
               for dy in range(-r, r + 1) for dx in range(-r, r + 1))
    assert best[1:] == (2, -3)
    assert row.psnr_aligned == pytest.approx(best[0], abs=1e-4)
    assert row.ssim_aligned == pytest.approx(ref_ssim(moved[r + 2:h - r + 2, r - 3:w - r - 3], target), abs=1e-4)
    assert row.psnr == pytest.approx(ref_psnr(moved, sharp), abs=1e-4) and row.psnr < row.psnr_aligned - 3
    assert report.summary("identity").psnr_aligned == pytest.approx(row.psnr_aligned)
    result = run("eval", root, "--baseline", "identity", "--align", "4")
    assert result.exit_code == 0, result.output
    assert "aligned within 4 px" in result.output and f"{row.psnr_aligned:.2f}" in result.output
    with pytest.raises(MsdnError, match="--align must be 0 or more"):
        evaluate(discover(root), [Contender("identity", None)], align=-1)


def test_gradient_ratio_is_the_output_texture_over_the_sharp_images(tmp_path: Path) -> None:
    """A box-blurred input keeps a fraction of the sharp photo's gradient; numpy gives the same figure."""
    root = tmp_path / "p"
    sharp = sharp_crop(0, h=60, w=70)
    blurred = np.stack([np.apply_along_axis(lambda row: np.convolve(row, np.ones(5) / 5, "same"), 1, sharp[..., c])
                        for c in range(3)], -1).round().clip(0, 255).astype(np.uint8)
    write(root / "sharp" / "a.png", sharp)
    write(root / "blur" / "a.png", blurred)

    def grad(x: np.ndarray) -> float:
        x = x.astype(float)
        return np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=0)).mean()

    (row,) = evaluate(discover(root), [Contender("identity", None)]).rows
    assert row.grad_ratio == pytest.approx(grad(blurred) / grad(sharp), rel=1e-5) and 0.2 < row.grad_ratio < 0.9
    result = run("eval", root, "--baseline", "identity")
    assert result.exit_code == 0 and "grad" in result.output and f"{row.grad_ratio:.3f}" in result.output


def test_kohler_groups_and_identity_baseline(tmp_path: Path) -> None:
    root = tmp_path / "kohler"
    for img in (1, 2):
        sharp = sharp_crop(img)
        write(root / "sharp" / f"Image{img}.png", sharp)
        for k in (1, 2):
            write(root / "blur" / f"Image{img}_{k}.png", blur(sharp, 3 + 4 * k))
    report = evaluate(discover(root), [Contender("identity", None)])
    assert report.groups == ["Image1", "Image2"]
    for row in report.rows:
        blurred, sharp = read(root / "blur" / f"{row.name}.png"), read(root / "sharp" / f"{row.group}.png")
        assert row.psnr == pytest.approx(ref_psnr(blurred, sharp), abs=1e-4)
        assert row.ssim == pytest.approx(ref_ssim(blurred, sharp), abs=1e-4)
    # the longer kernel blurs more: lower scores, so the comparison above is not vacuous
    by = {r.name: r for r in report.rows}
    assert by["Image1_2"].psnr < by["Image1_1"].psnr and by["Image2_2"].ssim < by["Image2_1"].ssim
    assert report.summary("identity", "Image1").count == 2


def test_center256_and_crop_border(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_pair(root / "blur" / "big.png", root / "sharp" / "big.png", 0, h=270, w=300)
    write_pair(root / "blur" / "small.png", root / "sharp" / "small.png", 1)
    ds = discover(root)
    blurred, sharp = read(root / "blur" / "big.png"), read(root / "sharp" / "big.png")

    report = evaluate(ds, [Contender("identity", None)], protocol="center256")
    (row,) = report.rows
    c_b, c_s = blurred[7:263, 22:278], sharp[7:263, 22:278]
    assert row.psnr == pytest.approx(ref_psnr(c_b, c_s), abs=1e-4)
    assert row.ssim == pytest.approx(ref_ssim(c_b, c_s), abs=1e-4)
    assert [p.path for p in report.problems] == ["blur/small.png"]
    assert "smaller than the 256x256" in report.problems[0].reason

    report = evaluate(ds, [Contender("identity", None)], crop_border=6)
    big = next(r for r in report.rows if r.name == "big")
    assert big.psnr == pytest.approx(ref_psnr(blurred[6:-6, 6:-6], sharp[6:-6, 6:-6]), abs=1e-4)
    assert big.ssim == pytest.approx(ref_ssim(blurred[6:-6, 6:-6], sharp[6:-6, 6:-6]), abs=1e-4)
    assert big.psnr != pytest.approx(ref_psnr(blurred, sharp), abs=1e-3)


def test_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_pair(root / "blur" / "good.png", root / "sharp" / "good.png", 0)
    write(root / "blur" / "resized.png", sharp_crop(1, h=30))
    write(root / "sharp" / "resized.png", sharp_crop(1))
    write(root / "sharp" / "broken.png", sharp_crop(2))
    (root / "blur" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write(root / "blur" / "orphan.png", sharp_crop(2))
    js = tmp_path / "r.json"
    result = run("eval", root, "--baseline", "identity", "--json", js)
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    # --baseline scores the blurred input beside the default model, not instead of it
    assert report["models"] == ["identity", "msdn-photos"]
    assert [(r["model"], r["name"]) for r in report["rows"]] == [("identity", "good"), ("msdn-photos", "good")]
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    assert "size 56x30 differs from the sharp image's 56x40" in reasons["blur/resized.png"]
    assert reasons["blur/broken.png"].startswith("unreadable:")
    assert reasons["blur/orphan.png"] == "no sharp image with this name"
    assert "1 images scored, 3 skipped" in result.output
    assert "skipped blur/resized.png: size" in result.output

    # when nothing can be scored: the reasons, then a one-line error
    (root / "blur" / "good.png").write_bytes(b"")
    result = run("eval", root, "--baseline", "identity")
    assert result.exit_code == 1 and "no image pair could be scored" in result.output


def test_two_models_side_by_side(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for i in range(2):
        write_pair(root / "blur" / f"{i}.png", root / "sharp" / f"{i}.png", i)
    w1 = tiny_weights(tmp_path / "run1" / "best.safetensors", seed=1)
    w2 = tiny_weights(tmp_path / "run2" / "best.safetensors", seed=2)
    js = tmp_path / "r.json"
    result = run("eval", root, "-w", w1, "-w", w2, "--json", js, "--limit", 1, "--device", "cpu", "--amp", "none")
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    # Named by file and folder: a bare "best" column read like a verdict.
    assert report["models"] == ["run1/best.safetensors", "run2/best.safetensors"]
    assert [(r["model"], r["name"]) for r in report["rows"]] == [("run1/best.safetensors", "0"),
                                                                 ("run2/best.safetensors", "0")]
    assert report["rows"][0]["psnr"] != pytest.approx(report["rows"][1]["psnr"], abs=1e-3)
    header = next(line for line in result.output.splitlines() if "run1/best.safetens" in line)
    assert "run2/best.safetens" in header  # one column group per model, on the same table line
    assert "gain dB" not in result.output  # no baseline asked


def test_existing_outputs_need_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_pair(root / "blur" / "a.png", root / "sharp" / "a.png", 0)
    js = tmp_path / "r.json"
    js.write_text("keep me")
    result = run("eval", root, "--baseline", "identity", "--json", js)
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.output
    assert js.read_text() == "keep me"
    assert run("eval", root, "--baseline", "identity", "--json", js, "--overwrite").exit_code == 0
    assert json.loads(js.read_text())["rows"][0]["name"] == "a"
    with pytest.raises(MsdnError, match="one of the dataset's images"):
        check_outputs(discover(root), [], None, [root / "sharp" / "a.png"], overwrite=True)
    # a report that could not be written is refused up front, not after the run as a traceback
    result = run("eval", root, "--baseline", "identity", "--json", tmp_path / "missing" / "r.json")
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    result = run("eval", root, "--baseline", "identity", "--csv", root, "--overwrite")
    assert result.exit_code == 1 and "it is a directory" in result.output


def test_unknown_options_are_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_pair(root / "blur" / "a.png", root / "sharp" / "a.png", 0)
    for args, message in ((["--baseline", "mean"], "unknown baseline 'mean'"),
                          (["--baseline", "identity", "--protocol", "center"], "unknown protocol 'center'"),
                          (["--weights", tmp_path / "nope.safetensors"], "weights file not found"),
                          (["--model", "no-such-model"], "unknown model 'no-such-model'"),
                          (["--baseline", "identity", "--amp", "int8"], "unknown --amp 'int8'")):
        result = run("eval", root, *args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_bad_options_are_refused_before_any_data_or_model_is_read(tmp_path: Path) -> None:
    missing = ["--weights", tmp_path / "nope.safetensors"]  # loading it would fail: the option is checked first
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "no-data"), "--protocol", "foo", *map(str, missing)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "Error: unknown protocol 'foo': choose one of full, center256"


def test_helpers() -> None:
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    x = torch.zeros(1, 3, 2, 3)
    strip = side_by_side(x, x + 0.5, x + 1, gap=1)
    assert strip.shape == (1, 3, 2, 11) and strip[0, 0, 0].tolist() == [0, 0, 0, 1, .5, .5, .5, 1, 1, 1, 1]
    pair = Pair("SEQ", "img", Path("b.png"), Path("s.png"))
    assert output_paths(Path("o"), "m/x", pair) == (Path("o/m_x/SEQ/img.png"), Path("o/m_x/SEQ/img_strip.png"))
