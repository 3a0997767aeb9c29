"""The in-memory photo bank, training batches and the fixed validation pairs (deblur_cli.training.synthetic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from deblur_cli.evaluation import metrics
from deblur_cli.training import shake
from deblur_cli.training import synthetic as S
from deblur_cli.training.data import Sample


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("photos")
    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        path = root / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()[:200, :240]).save(path)
        out.append(Sample(sharp=path))
    return out


def test_bank_decodes_once_and_cuts_deterministic_crops(photos: list[Sample], monkeypatch) -> None:
    bank = S.PhotoBank(photos)
    monkeypatch.setattr(S, "read_rgb", lambda path: pytest.fail("a batch must not decode files"))
    a = bank.batch(6, 64, torch.Generator().manual_seed(1))
    b = bank.batch(6, 64, torch.Generator().manual_seed(1))
    c = bank.batch(6, 64, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each crop (up to a flip / quarter turn) is a window of one of the photos
    originals = [p.permute(1, 2, 0).numpy() for p in bank.photos]
    for crop in a:
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (crop, crop.flip(-1)) for k in range(4)]
        assert any(_occurs(v.permute(1, 2, 0).numpy(), o) for v in views for o in originals)


def _occurs(window: np.ndarray, photo: np.ndarray) -> bool:
    h, w = window.shape[:2]
    for top in range(photo.shape[0] - h + 1):
        rows = np.nonzero((photo[top, : photo.shape[1] - w + 1] == window[0, 0]).all(axis=-1))[0]
        if any(np.array_equal(photo[top:top + h, left:left + w], window) for left in rows):
            return True
    return False


def test_scaled_crops_are_area_downsampled_windows() -> None:
    photo = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bank = S.PhotoBank([])
    bank.photos = [photo]
    crop = bank.batch(1, 20, torch.Generator().manual_seed(0), scales=(0.5, 0.5))[0]  # the 40 px window -> 20 px
    expected = F.avg_pool2d(photo[None].float(), 2).round().to(torch.uint8)[0]
    views = [torch.rot90(v, k, dims=(-2, -1)) for v in (crop, crop.flip(-1)) for k in range(4)]  # undo D4
    assert any(torch.equal(v, expected) for v in views)


def test_training_pair_is_a_function_of_seed_and_step(photos: list[Sample]) -> None:
    bank = S.PhotoBank(photos)
    args = (bank, 4, 48, shake.TRAIN_FAMILIES, (2.0, 12.0), shake.Realism())
    b1, s1 = S.training_pair(*args, 0, 7, (0.5, 1.0))
    b2, s2 = S.training_pair(*args, 0, 7, (0.5, 1.0))
    b3, _ = S.training_pair(*args, 0, 8, (0.5, 1.0))
    assert b1.shape == s1.shape == (4, 3, 48, 48)
    assert torch.equal(b1, b2) and torch.equal(s1, s2) and not torch.equal(b1, b3)
    assert (b1 - s1).abs().mean() > 0.005  # blurred


def test_validation_pairs_are_fixed_per_photo_name(photos: list[Sample]) -> None:
    levels = {"mild": (3.0, 8.0), "extreme": (30.0, 60.0)}
    pairs = S.validation_pairs(photos[:2], 64, seed=3, levels=levels)
    assert [(p.name, p.level, p.group) for p in pairs[:6]] == [
        ("astronaut", "mild", "train"), ("astronaut", "mild", "held-out"), ("astronaut", "mild", "frames-held-out"),
        ("astronaut", "extreme", "train"), ("astronaut", "extreme", "held-out"),
        ("astronaut", "extreme", "frames-held-out")]
    assert all(p.blurred.shape == p.sharp.shape == (1, 3, 64, 64) and p.blurred.dtype == torch.uint8 for p in pairs)
    # adding a photo leaves the others' pairs unchanged (seeds come from names, not positions)
    more = S.validation_pairs(photos[::-1], 64, seed=3, levels=levels)
    by = {(p.name, p.level, p.group): p for p in more}
    assert all(torch.equal(by[(p.name, p.level, p.group)].blurred, p.blurred) for p in pairs)
    extreme = [p for p in pairs if p.level == "extreme"]
    mild = [p for p in pairs if p.level == "mild"]
    mse = lambda ps: np.mean([float((p.blurred.float() - p.sharp.float()).pow(2).mean()) for p in ps])  # noqa: E731
    assert mse(extreme) > 2 * mse(mild)


def test_score_identity_baseline_and_a_perfect_model(photos: list[Sample]) -> None:
    pairs = S.validation_pairs(photos[:1], 48, seed=0, levels={"mild": (3.0, 8.0)})
    base = S.score(None, pairs, radius=2)
    train = next(p for p in pairs if p.group == "train")
    expected = float(metrics.psnr(train.blurred.float() / 255, train.sharp.float() / 255)[0])
    assert base["train/mild/psnr"] == pytest.approx(expected) and base["train/psnr"] == pytest.approx(expected)
    assert base["train/psnr_aligned"] >= base["train/psnr"] - 1.0
    sharp_of = {p.blurred.numpy().tobytes(): p.sharp for p in pairs}
    perfect = S.score(lambda x: sharp_of[(x * 255).round().to(torch.uint8).numpy().tobytes()].float() / 255,
                      pairs, radius=2)
    assert perfect["held-out/psnr_aligned"] == float("inf") and perfect["train/psnr"] == float("inf")
    groups = ("train", "held-out", "frames-held-out")
    assert set(base) == {f"{k}/{m}" for g in groups for k in (g, f"{g}/mild")
                         for m in ("psnr", "psnr_aligned", "ssim_aligned", "psnr_pooled")} | {
                             f"{g}/mild/grad_ratio" for g in groups}
    assert perfect["frames-held-out/mild/grad_ratio"] == pytest.approx(1.0)  # the sharp image's own texture
    assert base["train/mild/grad_ratio"] < 1.0  # blur removes gradient
    assert perfect["train/psnr_pooled"] == float("inf")


def test_still_pairs_are_sharp_crops_with_fixed_read_noise(photos: list[Sample]) -> None:
    pairs = S.still_pairs(photos[:2], 48, seed=0)
    assert [(p.group, p.level) for p in pairs] == [("still", "all")] * 2
    for p in pairs:
        noise = (p.blurred.float() - p.sharp.float()) / 255
        assert float(noise.std()) == pytest.approx(S.STILL_NOISE, rel=0.15) and abs(float(noise.mean())) < 0.002
    assert torch.equal(S.still_pairs(photos[:1], 48, seed=0)[0].blurred, pairs[0].blurred)  # fixed per name
    base = S.score(None, pairs, radius=0)
    identity = S.score(lambda x: x, pairs, radius=0)  # a network that leaves the photo alone gains exactly 0
    assert identity["still/psnr_aligned"] == base["still/psnr_aligned"]
    sharpened = S.score(lambda x: (2 * x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).clamp(0, 1), pairs,
                        radius=0)  # what a network that only saw blur does to a sharp photo
    assert sharpened["still/psnr_aligned"] < base["still/psnr_aligned"] - 1.0


def test_pooled_psnr_scores_a_level_as_one_photo(photos: list[Sample]) -> None:
    """Pooled = PSNR of the squared error summed over the level's crops (an independent numpy
    computation), not the mean of per-crop dB; a group's value is the mean over its levels."""
    levels = {"mild": (3.0, 8.0), "strong": (16.0, 30.0)}
    pairs = S.validation_pairs(photos, 40, seed=1, levels=levels)
    base = S.score(None, pairs, radius=0)

    def pooled(level: str) -> float:
        errors = [((p.blurred.numpy().astype(np.float64) - p.sharp.numpy()) ** 2).mean()
                  for p in pairs if p.group == "train" and p.level == level]
        return 10 * np.log10(255.0**2 / np.mean(errors))

    assert base["train/mild/psnr_pooled"] == pytest.approx(pooled("mild"), abs=1e-9)
    assert base["train/psnr_pooled"] == pytest.approx((pooled("mild") + pooled("strong")) / 2, abs=1e-9)
    # Jensen: the mean of per-crop dB is never below the dB of the mean error, and differs here.
    assert base["train/strong/psnr"] > base["train/strong/psnr_pooled"] + 0.01


def test_centre_pads_small_photos() -> None:
    photo = torch.arange(3 * 10 * 12, dtype=torch.uint8).view(3, 10, 12)
    out = S.centre(photo, 16)
    assert out.shape == (3, 16, 16) and torch.equal(out[:, 3:13, 2:14], photo)
    assert torch.equal(S.centre(photo, 6), photo[:, 2:8, 3:9])


def test_missing_photo_file_is_a_clear_error(tmp_path: Path) -> None:
    from deblur_cli.errors import MsdnError

    with pytest.raises(MsdnError, match="cannot read image"):
        S.PhotoBank([Sample(sharp=tmp_path / "gone.png")])


def test_crop_tries_keep_the_most_textured_window() -> None:
    """Half flat grey, half noise: one try lands anywhere, eight tries nearly always on texture;
    one try draws exactly what the bank drew before the option existed (resumed runs replay)."""
    flat = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    noisy = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bank = S.PhotoBank([])
    bank.photos = [torch.cat([flat, noisy], dim=-1)]
    textured = lambda b: sum(S.texture(c) > 20 for c in b) / len(b)  # noqa: E731
    one = bank.batch(64, 24, torch.Generator().manual_seed(3))
    eight = bank.batch(64, 24, torch.Generator().manual_seed(3), tries=8)
    assert 0.3 < textured(one) < 0.8 and textured(eight) > 0.95
    scaled = bank.batch(64, 24, torch.Generator().manual_seed(3), scales=(0.5, 1.0))
    # sha256 of the same call on the bank before `tries` existed (commit 487c4b1)
    assert hashlib.sha256(scaled.numpy().tobytes()).hexdigest()[:16] == "c185739b917d5051"
    assert S.texture(flat) == 0.0 and S.texture(noisy) > 50


def test_gradient_matches_numpy_on_8_bit_values() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 20, 30))
    q = np.round(np.clip(images, 0, 1) * 255)
    expected = np.abs(np.diff(q, axis=3)).mean(axis=(1, 2, 3)) + np.abs(np.diff(q, axis=2)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.gradient(torch.from_numpy(images)).numpy(), expected, rtol=1e-12)
    assert float(metrics.gradient(torch.full((1, 3, 8, 8), 0.5))[0]) == 0.0


def test_real_blur_pairs_are_centre_crops_of_a_paired_folder(tmp_path: Path) -> None:
    from deblur_cli.errors import MsdnError
    from deblur_cli.training.validation import real_pairs

    for folder, offset in (("blur", 10), ("sharp", 0)):
        (tmp_path / folder).mkdir()
        Image.fromarray((skdata.astronaut()[:120, :160] // 2 + offset).astype(np.uint8)).save(tmp_path / folder / "a.png")
    pairs = real_pairs(str(tmp_path), 64)
    assert [(p.group, p.level, p.name) for p in pairs] == [("real", "all", "a")]
    sharp = torch.from_numpy(skdata.astronaut()[28:92, 48:112] // 2).permute(2, 0, 1)[None]
    assert torch.equal(pairs[0].sharp, sharp) and torch.equal(pairs[0].blurred, sharp + 10)
    empty = tmp_path / "empty"
    (empty / "blur").mkdir(parents=True)
    (empty / "sharp").mkdir()
    with pytest.raises(MsdnError):
        real_pairs(str(empty), 64)


def test_render_workers_give_exactly_the_batches_of_the_training_process(photos: list[Sample]) -> None:
    from deblur_cli.training.trainconfig import TrainConfig
    from deblur_cli.training.trainingdata import StepBatches, rendered

    config = TrainConfig(data=".", batch_size=2, crop=32, blur_strength=(1.0, 6.0), frame_share=0.5)
    batches = StepBatches(S.PhotoBank(photos), config, seed=5, total=7)
    here = list(rendered(batches, 3, workers=0))
    ahead = list(rendered(batches, 3, workers=2))
    assert len(here) == len(ahead) == 4 and here[0][0].shape == (2, 3, 32, 32)
    for (b0, s0), (b1, s1) in zip(here, ahead):
        assert torch.equal(b0, b1) and torch.equal(s0, s1)
    assert not torch.equal(here[0][0], here[1][0])  # each step its own batch
