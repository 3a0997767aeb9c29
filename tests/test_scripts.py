"""Pure parts of the data/training scripts in scripts/ (photo curation, eval set, packing, manifest)."""

from __future__ import annotations

import importlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY

from deblur_cli.training.synthetic import STILL_NOISE
from deblur_cli.training.trainconfig import TrainConfig
from deblur_cli.weights.weightfile import read_metadata

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
get_photos = importlib.import_module("get_photos")
make_eval_set = importlib.import_module("make_eval_set")
manifest_entry = importlib.import_module("manifest_entry")
fork_run = importlib.import_module("fork_run")
photo_containers = importlib.import_module("photo_containers")


def _jpeg(w: int, h: int, seed: int = 0, exif_thumb: bytes | None = None, comment: bytes | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80, progressive=seed % 2 == 1, comment=comment or b"")
    data = buf.getvalue()
    if exif_thumb is not None:  # an APP1 segment holding a whole JPEG, as EXIF thumbnails do
        payload = b"Exif\x00\x00" + exif_thumb
        app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
        data = data[:2] + app1 + data[2:]
    return data


# --- JPEG streams inside Eet files ---------------------------------------------------------------


def test_iter_jpegs_finds_exact_streams_in_a_container_blob() -> None:
    thumb = _jpeg(16, 16, seed=4)
    a = _jpeg(64, 48, seed=1, exif_thumb=thumb, comment=b"\xff\xd9 not the end")  # progressive, EOI bytes in COM
    b = _jpeg(120, 80, seed=2)
    blob = (b"EET\x1e\xe0\x0e" + bytes(range(256)) + b"\xff\xd8\xff\x00garbage" + a + b"\x00" * 37 + b
            + b"\xff\xd8\xff\xe0\x00\x10JFIF")  # a fake SOI and a truncated header at the end
    found = list(photo_containers.iter_jpegs(blob))
    assert [data for _, data, _ in found] == [a, b]  # thumbnail skipped, not cut at the COM's FFD9
    assert [size for _, _, size in found] == [(64, 48), (120, 80)]
    assert blob[found[1][0]:found[1][0] + len(b)] == b
    assert photo_containers.largest_jpeg(blob) == b


def test_truncated_jpeg_is_not_extracted() -> None:
    a = _jpeg(64, 64, seed=2)
    assert photo_containers.jpeg_end(a, 0) == len(a)
    assert photo_containers.jpeg_end(a[:-200], 0) is None
    assert list(photo_containers.iter_jpegs(a[:-200])) == []
    assert photo_containers.largest_jpeg(b"no images here") is None


def _rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-2 Qt resource file holding `files` ({"dir/name": (bytes, zlib-compressed?)}), as rcc writes it."""
    import struct
    import zlib

    names = b""
    name_off: dict[str, int] = {}

    def name(n: str) -> int:
        nonlocal names
        if n not in name_off:
            name_off[n] = len(names)
            names += struct.pack(">HI", len(n), 0) + n.encode("utf-16-be")
        return name_off[n]

    dirs = sorted({f.split("/")[0] for f in files})
    data = b""
    nodes = [struct.pack(">IHII", 0, 2, len(dirs), 1) + b"\0" * 8]  # root
    children = []
    for d in dirs:
        kids = sorted(f for f in files if f.split("/")[0] == d)
        nodes.append(struct.pack(">IHII", name(d), 2, len(kids), 1 + len(dirs) + len(children)) + b"\0" * 8)
        children.extend(kids)
    for f in children:
        raw, compress = files[f]
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw) if compress else raw
        nodes.append(struct.pack(">IHHHI", name(f.split("/")[1]), 1 if compress else 0, 0, 0, len(data)) + b"\0" * 8)
        data += struct.pack(">I", len(blob)) + blob
    tree = b"".join(nodes)
    header_len = 20
    return (b"qres" + struct.pack(">IIII", 2, header_len, header_len + len(tree), header_len + len(tree) + len(data))
            + tree + data + names)


def test_rcc_files_lists_every_file_with_its_path() -> None:
    a, b, c = _jpeg(40, 30, seed=1), _jpeg(50, 20, seed=2), b"Copyright: someone\nLicense: CC0-1.0\n"
    buf = _rcc({"act/a.webp": (a, False), "act/README": (c, True), "other/b.jpg": (b, False)})
    assert dict(photo_containers.rcc_files(buf)) == {"/act/README": c, "/act/a.webp": a, "/other/b.jpg": b}
    with pytest.raises(ValueError):
        list(photo_containers.rcc_files(b"RIFF0000WEBP"))


# --- curation decisions --------------------------------------------------------------------------


def test_split_is_deterministic_salted_and_near_the_fraction() -> None:
    keys = [f"src__photo{i}" for i in range(4000)]
    first = [get_photos.split_of(k, 0.2, "salt-a") for k in keys]
    assert first == [get_photos.split_of(k, 0.2, "salt-a") for k in keys]
    assert 0.17 < first.count("val") / len(keys) < 0.23
    other = [get_photos.split_of(k, 0.2, "salt-b") for k in keys]
    assert other != first
    # pinned: changing the hash silently would move validation photos into training
    assert get_photos.split_of("opencv-aloe", 0.2, "msdn-photos-v5") == "val"  # the aloe stereo pair's group
    assert get_photos.split_of("palapeli-data__citrus-fruits", 0.2, "msdn-photos-v5") == "train"


def test_groups_keep_near_duplicates_on_one_side() -> None:
    groups = {"tiktok__pexels-7303*": "shoot", "cv__aloe*": "aloe"}
    assert get_photos.group_of("tiktok__pexels-7303773", groups) == "shoot"
    assert get_photos.group_of("cv__aloeR", groups) == get_photos.group_of("cv__aloeL", groups)
    assert get_photos.group_of("tiktok__pexels-1317558", groups) == "tiktok__pexels-1317558"


@pytest.mark.parametrize(("size", "expected"), [((3840, 2160), (1600, 900)), ((1920, 2880), (1067, 1600)),
                                                ((1350, 890), (1350, 890))])
def test_output_size_downscales_only(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert get_photos.output_size(size, 1600) == expected


def test_measures_tell_graphics_texture_and_blur_apart() -> None:
    rng = np.random.default_rng(0)
    graphic = np.zeros((360, 640), np.uint8)
    graphic[:, 320:] = 200
    graphic[100:200, 50:150] = 90
    texture = rng.normal(128, 40, (360, 640)).clip(0, 255)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(rng.normal(128, 120, (360, 640)), 3).clip(0, 255).round()
    g, t, b = (get_photos.measure(x) for x in (graphic, texture, blurred))
    assert g.flat > 0.9 and "graphics" in g.verdict()
    assert t.flat < 0.01 and t.sharp > 0.99 and t.verdict() is None
    assert b.flat < 0.05 and b.sharp < 0.1 and "blurred" in b.verdict()


def test_reviewed_lists_win_over_heuristics() -> None:
    cfg = {"min_long_side": 1280, "min_short_side": 720}
    source = {"allow": ["a"], "deny": {"d": "graphic"}}
    bad = get_photos.Measures(flat=0.9, sharp=0.1)
    good = get_photos.Measures(flat=0.0, sharp=1.0)
    assert get_photos.decide("a", source, bad, (1600, 900), cfg) == (True, "allowed", True)
    assert get_photos.decide("d", source, good, (1600, 900), cfg)[:2] == (False, "denied: graphic")
    assert get_photos.decide("new", source, bad, (1600, 900), cfg)[0] is False
    assert get_photos.decide("new", source, good, (1600, 900), cfg) == (True, "kept by heuristics (unreviewed)", False)
    assert "too small" in get_photos.decide("a", source, good, (1200, 900), cfg)[1]


def test_a_source_can_pin_its_split_and_name_photos_by_folder() -> None:
    cfg = {"val_fraction": 0.2, "split_salt": "msdn-photos-v5"}
    assert get_photos.split_for("opencv-aloe", {}, cfg) == "val"  # no fixed split: the salted hash decides
    assert get_photos.split_for("opencv-aloe", {"split": "train"}, cfg) == "train"
    with pytest.raises(ValueError):
        get_photos.split_for("x", {"split": "test"}, cfg)
    rel = Path("usr/share/wallpapers/Path/contents/images/2560x1600.jpg")
    assert get_photos.name_of(rel, {}) == "2560x1600"
    assert get_photos.name_of(rel, {"name_from_dir": 3}) == "Path"


def test_candidates_use_folder_names(tmp_path: Path) -> None:
    for name in ("A", "B"):
        d = tmp_path / "w" / name / "images"
        d.mkdir(parents=True)
        (d / "1920x1080.jpg").write_bytes(name.encode())
    got = list(get_photos.candidates(tmp_path, {"glob": ["w/*/images/*.jpg"], "name_from_dir": 1}))
    assert got == [("A", "w/A/images/1920x1080.jpg", b"A"), ("B", "w/B/images/1920x1080.jpg", b"B")]


def test_photo_sources_config_is_consistent() -> None:
    cfg = get_photos.load_config()
    for key, source in cfg["sources"].items():
        assert source["kind"] in ("deb", "pypi"), key
        assert source["licence"] and "?" not in source["licence"], key
        assert not set(source.get("allow", [])) & set(source.get("deny", {})), key
        assert source.get("split") in (None, "train"), key  # the validation split is fixed: new sources train
    assert cfg["min_val_photos"] >= 10 and 0 < cfg["val_fraction"] < 0.5


def test_check_split_requires_enough_validation_photos_and_sources() -> None:
    def entry(i: int, split: str, source: str) -> get_photos.Entry:
        return get_photos.Entry(file="", id=str(i), source=source, package_version="", original_path="", licence="",
                                width=1, height=1, original_width=1, original_height=1, split=split, flat=0, sharp=1,
                                reviewed=True)

    few = [entry(i, "val", "s1") for i in range(12)]
    assert "from 1 sources" in get_photos.check_split(few, 10, 3)
    ok = [entry(i, "val", f"s{i % 3}") for i in range(12)] + [entry(99, "train", "s0")]
    assert get_photos.check_split(ok, 10, 3) is None


# --- eval set, example, packing ------------------------------------------------------------------


def test_eval_blur_is_reproducible_per_photo_level_and_group() -> None:
    from deblur_cli.training.synthetic import name_seed

    assert len({name_seed(1, "a", lv, g) for lv in make_eval_set.LEVELS for g in make_eval_set.GROUPS}) == 12
    assert name_seed(1, "a", "mild", "train") != name_seed(2, "a", "mild", "train")
    sharp = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    b1, t1 = make_eval_set.blur_photo(sharp, 5, (3.0, 6.0), ("walk",))
    b2, _ = make_eval_set.blur_photo(sharp, 5, (3.0, 6.0), ("walk",))
    b3, _ = make_eval_set.blur_photo(sharp, 6, (3.0, 6.0), ("walk",))
    assert torch.equal(b1, b2) and not torch.equal(b1, b3)
    assert b1.shape == t1.shape == sharp.shape and 0 <= b1.min() and b1.max() <= 1
    torch.testing.assert_close(t1, sharp, atol=1e-5, rtol=0)  # the target is the photo itself
    assert (b1 - t1).abs().mean() > 0.01  # really blurred


def test_make_eval_set_writes_every_group_per_level(tmp_path: Path) -> None:
    photos = tmp_path / "val"
    photos.mkdir()
    (photos / "p.jpg").write_bytes(_jpeg(160, 120, seed=1))
    out = tmp_path / "eval"
    assert make_eval_set.main(["--photos", str(photos), "--out", str(out), "--levels", "mild,extreme"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [f"{g}/test/{lv}/{k}/p.png" for g in ("frames-heldout", "heldout")
                     for lv in ("extreme", "mild") for k in ("blur", "sharp")] + [
        "still/blur/p.png", "still/sharp/p.png"] + [f"train/test/{lv}/{k}/p.png" for lv in ("extreme", "mild")
                                                     for k in ("blur", "sharp")]
    sharp, noisy = (np.asarray(Image.open(out / "still" / k / "p.png")).astype(float) for k in ("sharp", "blur"))
    assert sharp.shape == (120, 160, 3)
    assert np.std(noisy - sharp) == pytest.approx(255 * STILL_NOISE, rel=0.15)  # only the fixed read noise
    assert 40 < 10 * np.log10(255**2 / np.mean((noisy - sharp) ** 2)) < 50  # about 46 dB, as validation's still crops


# --- manifest entry ------------------------------------------------------------------------------


def _report(gain: float, aligned_gain: float | None = None) -> dict:
    summary = []
    for model, add, add_aligned in (("identity", 0.0, 0.0), ("m", gain, aligned_gain)):
        for group, base in (("mild", 32.0), ("strong", 25.0), (None, 28.5)):
            row = {"model": model, "group": group, "count": 2, "psnr": base + add, "ssim": 0.8, "seconds": 1,
                   "psnr_aligned": None, "ssim_aligned": None}
            if aligned_gain is not None:
                row |= {"psnr_aligned": base + 0.5 + add_aligned, "ssim_aligned": 0.85}
            summary.append(row)
    return {"models": ["m", "identity"], "summary": summary}


def test_level_table_raw_and_aligned() -> None:
    table = manifest_entry.level_table(_report(3.5, 2.0))
    assert list(table) == ["mild", "strong", "overall"]
    assert table["overall"]["gain_db"] == pytest.approx(3.5) and table["mild"]["blur_psnr"] == 32.0
    assert table["overall"]["gain_db_aligned"] == pytest.approx(2.0) and table["mild"]["psnr_aligned"] == 34.5
    assert "gain_db_aligned" not in manifest_entry.level_table(_report(1.0))["overall"]  # eval without --align
    with pytest.raises(ValueError, match="one model plus the identity baseline"):
        manifest_entry.level_table({"models": ["m"], "summary": []})


def test_manifest_apply_needs_a_gain_in_every_group(tmp_path: Path) -> None:
    from deblur_cli.weights.manifest import load_manifest
    from deblur_cli.nets.model import MSDN
    from deblur_cli.weights.weightfile import save_weights

    config = TINY
    weights = tmp_path / "m.safetensors"
    save_weights(weights, MSDN(config).state_dict(), config, dtype=torch.float16)
    manifest = tmp_path / "pkg" / "weights_manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"schema_version": 1, "default": None, "models": []}))
    photos = tmp_path / "missing.json"

    train_only = manifest_entry.build_entry(weights, {"train": _report(3.0, 3.0)}, "m", photos)
    assert "--heldout-json" in manifest_entry.apply(train_only, weights, manifest, 0.0)
    worse = manifest_entry.build_entry(weights, {"train": _report(3.0, 3.0), "heldout": _report(1.0, 0.9),
                                                 "frames_heldout": _report(0.2, -0.1), "real": _report(0.3, 0.2)},
                                       "m", photos)
    assert worse["metrics"]["heldout_overall_gain_db_aligned"] == pytest.approx(0.9) and worse["bundled"] == "m.safetensors"
    assert worse["metrics"]["real_mild_gain_db_aligned"] == pytest.approx(0.2)
    assert (manifest_entry.apply(worse, weights, manifest, 0.0)
            == "frames_heldout aligned gain -0.10 dB is not above +0.00 dB; not applied")
    assert "heldout aligned gain +0.90 dB is not above +1.00 dB" in manifest_entry.apply(
        {**worse, "metrics": {k: v for k, v in worse["metrics"].items() if not k.startswith(("frames", "real"))}},
        weights, manifest, 1.0)
    assert json.loads(manifest.read_text())["default"] is None
    assert not (manifest.parent / "weights" / "m.safetensors").exists()

    good = manifest_entry.build_entry(weights, {"heldout": _report(1.5, 1.2), "still": _report(-4.0, -3.5)}, "m", photos,
                                      still_share=0.04)
    assert good["metrics"]["still_overall_gain_db_aligned"] == pytest.approx(-3.5)  # recorded, not a condition
    assert "camera shake, 4% of inputs left unblurred; weights: MIT" in good["training_data"]
    assert "unblurred" not in worse["training_data"]
    assert "repo_id" not in good and "revision" not in good  # bundled only: the sha256 pins it
    assert manifest_entry.apply(good, weights, manifest, 0.0) is None
    data = json.loads(manifest.read_text())
    assert data["default"] == "m" and data["models"][0]["sha256"] == good["sha256"]
    assert (manifest.parent / "weights" / "m.safetensors").read_bytes() == weights.read_bytes()
    assert load_manifest(manifest).entry().sha256 == good["sha256"]  # msdn itself accepts the result

    odd = {**good, "licence_note": "x"}  # a field the manifest schema does not know is refused, not written
    assert "unknown field 'licence_note'" in manifest_entry.apply(odd, weights, manifest, 0.0)
    assert json.loads(manifest.read_text()) == data


def _run_killed_at_step_3(tmp_path: Path) -> tuple[TrainConfig, dict]:
    """A tiny synthetic-blur run of 6 steps, killed after its checkpoint of step 2, and that checkpoint."""
    from skimage import data as skdata

    from deblur_cli.training import train as T
    from deblur_cli.weights.checkpoint import load_training_checkpoint

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()[:64, :80]).save(photos / f"{name}.png")
    config = T.TrainConfig(data=str(photos), synthetic_blur=True, crop=32, batch_size=2, steps=6, warmup_steps=0,
                           blur_strength=(1.0, 6.0), workers=0, checkpoint_dir=str(tmp_path / "base"),
                           checkpoint_every=2, val_fraction=0.34, device="cpu", max_minutes=None)

    def stop_at_step_3(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 3:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2: both forks continue from it

    with pytest.raises(KeyboardInterrupt):
        T.train(config, TINY, callback=stop_at_step_3)
    return config, load_training_checkpoint(tmp_path / "base")


def test_fork_changes_the_recipe_and_rescales_the_schedule(tmp_path: Path) -> None:
    """A fork resumes where `--resume` would refuse; with lr x2 it continues the cosine a run started at 2 lr has."""
    from deblur_cli.training import train as T
    from deblur_cli.weights.checkpoint import load_training_checkpoint

    config, base = _run_killed_at_step_3(tmp_path)
    lrs = {}
    for name, changes in (("same", {}), ("double", {"lr": 2 * config.lr, "crop": 48})):
        run = tmp_path / name
        run.mkdir()
        forked = fork_run.fork(base, {**changes, "checkpoint_dir": str(run)})
        torch.save(forked, run / "last.pt")
        events: list[dict] = []
        T.train(None, resume=run, callback=events.append)
        lrs[name] = [e["lr"] for e in events if e["event"] == "step"]
        vals = [e for e in events if e["event"] == "val"]  # the fork's own best, not the parent's, names best.safetensors
        assert vals and read_metadata(run / "best.safetensors")["step"] == str(max(vals, key=lambda e: e["psnr"])["step"])
    assert load_training_checkpoint(tmp_path / "double")["train_config"]["crop"] == 48
    low, high = config.lr_final, config.lr  # the cosine runs from lr to lr_final: the fork's from 2 lr
    expected = [low + (2 * high - low) * (lr - low) / (high - low) for lr in lrs["same"]]
    assert len(lrs["same"]) == 4 and lrs["double"] == pytest.approx(expected, rel=1e-9)
    assert fork_run.fork(base, {"reset_optimizer": 1})["opt_g"]["state"] == {}
    assert base["best_val_psnr"] is not None and fork_run.fork(base, {})["best_val_psnr"] is None
    with pytest.raises(SystemExit, match="'cropp' is neither"):
        fork_run.fork(base, {"cropp": 64})


def test_fork_adds_a_fresh_critic_to_a_psnr_run(tmp_path: Path) -> None:
    """Turning the adversarial term on gives the fork a critic that trains from the fork's step and lr on."""
    from deblur_cli.training import train as T
    from deblur_cli.weights.checkpoint import load_training_checkpoint

    _, base = _run_killed_at_step_3(tmp_path)
    assert base["critic"] == {}
    run = tmp_path / "gan"
    run.mkdir()
    forked = fork_run.fork(base, {"adv_weight": 1.0, "lr": 1e-4, "checkpoint_dir": str(run), "steps": base["step"] + 2})
    again = fork_run.fork(base, {"adv_weight": 1.0, "lr": 1e-4, "checkpoint_dir": str(run), "steps": base["step"] + 2})
    assert all(torch.equal(again["critic"][k], v) for k, v in forked["critic"].items())  # reproducible
    torch.save(forked, run / "last.pt")
    events: list[dict] = []
    T.train(None, resume=run, callback=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [base["step"] + 1, base["step"] + 2]
    assert all(math.isfinite(e["loss_d"]) and "adv" in e for e in steps)
    after = load_training_checkpoint(run)
    assert after["opt_d"]["state"] and after["sched_d"]["last_epoch"] == base["step"] + 2


def test_gpu_burst_dry_run_on_cpu_brings_back_a_small_resumable_checkpoint(tmp_path: Path) -> None:
    """The burst's one command, on CPU for 2 steps: the same fork, `msdn train --resume` and slimming."""
    from deblur_cli.training import train as T
    from deblur_cli.weights.checkpoint import load_training_checkpoint

    gpu_burst = importlib.import_module("gpu_burst")
    config, base = _run_killed_at_step_3(tmp_path)
    out = tmp_path / "out"
    code = gpu_burst.main([str(tmp_path / "base"), str(out), "--device", "cpu", "--amp", "none", "--batch", "3",
                           "--steps", "2", "--render-workers", "1", "--lr", "3e-4", "--minutes", "5",
                           "--data", config.data, "--val-data", config.data, "--val-every", "1"])
    assert code == 0, (out / "train.log").read_text()
    back = load_training_checkpoint(out)
    assert back["step"] == base["step"] + 2 and back["opt_g"]["state"] == {}
    assert back["train_config"]["batch_size"] == 3 and back["train_config"]["render_workers"] == 1
    assert (out / "best.safetensors").is_file() and '"event": "val"' in (out / "metrics.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "last.pt", "metrics.jsonl", "train.log"]
    run = tmp_path / "merged"  # merged back on CPU as the docstring says
    run.mkdir()
    merged = fork_run.fork(back, {"batch_size": 2, "render_workers": 0, "checkpoint_dir": str(run),
                                  "steps": back["step"] + 1})
    torch.save(merged, run / "last.pt")
    events: list[dict] = []
    T.train(None, resume=run, callback=events.append)
    assert [e["step"] for e in events if e["event"] == "step"] == [back["step"] + 1]
