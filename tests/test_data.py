"""Training data: folder layouts, user errors, splits and the resumable sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deblur_cli.training import data as D
from deblur_cli.errors import MsdnError

torch.set_num_threads(2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- layouts and errors ---------------------------------------------------------------------


def save(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_gopro_layout(tmp_path: Path) -> None:
    for seq in ("GOPR0001", "GOPR0002"):
        for name in ("000001.png", "000002.png"):
            save(tmp_path / "train" / seq / "blur" / name)
            save(tmp_path / "train" / seq / "blur_gamma" / name)
            save(tmp_path / "train" / seq / "sharp" / name)
    scan = D.find_samples(tmp_path)
    assert len(scan.samples) == 4 and all(s.blur.parent.name == "blur" for s in scan.samples)
    scan = D.find_samples(tmp_path, blur_folder="blur_gamma")
    assert all(s.blur.parent.name == "blur_gamma" for s in scan.samples)
    assert all(s.blur.name == s.sharp.name for s in scan.samples)


def test_paired_and_synthetic_layouts(tmp_path: Path) -> None:
    save(tmp_path / "pairs" / "blur" / "a.png")
    save(tmp_path / "pairs" / "sharp" / "a.jpg")
    scan = D.find_samples(tmp_path / "pairs")
    assert [(s.blur.name, s.sharp.name) for s in scan.samples] == [("a.png", "a.jpg")]
    save(tmp_path / "photos" / "x.png")
    save(tmp_path / "photos" / "sub" / "y.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    scan = D.find_samples(tmp_path / "photos", synthetic=True)
    assert sorted(s.sharp.name for s in scan.samples) == ["x.png", "y.jpg"] and scan.samples[0].blur is None


def test_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MsdnError, match="no images found"):
        D.find_samples(tmp_path / "empty", synthetic=True)
    with pytest.raises(MsdnError, match="no training images"):
        D.find_samples(tmp_path / "empty")
    with pytest.raises(MsdnError, match="not found"):
        D.find_samples(tmp_path / "missing")

    save(tmp_path / "p" / "blur" / "a.png")
    save(tmp_path / "p" / "sharp" / "a.png")
    save(tmp_path / "p" / "blur" / "orphan.png")
    with pytest.raises(MsdnError, match="unmatched pair: .*orphan.png"):
        D.find_samples(tmp_path / "p")
    scan = D.find_samples(tmp_path / "p", skip_bad=True)
    assert len(scan.samples) == 1 and scan.skipped == {"unmatched": 1}


def test_check_samples_mismatch_unreadable_and_small(tmp_path: Path) -> None:
    ok = D.Sample(sharp=save(tmp_path / "s1.png", (64, 64)), blur=save(tmp_path / "b1.png", (64, 64)))
    mismatch = D.Sample(sharp=save(tmp_path / "s2.png", (64, 64)), blur=save(tmp_path / "b2.png", (64, 60)))
    broken = tmp_path / "s3.png"
    broken.write_bytes(b"\x89PNG not really")
    small = D.Sample(sharp=save(tmp_path / "s4.png", (30, 80)))
    with pytest.raises(MsdnError, match="size mismatch"):
        D.check_samples(D.Scan([ok, mismatch]), 32)
    with pytest.raises(MsdnError, match="cannot read image"):
        D.check_samples(D.Scan([ok, D.Sample(sharp=broken)]), 32)
    kept = D.check_samples(D.Scan([ok, mismatch, D.Sample(sharp=broken), small]), 32, skip_bad=True)
    assert kept.samples == [ok]
    assert kept.skipped == {"size mismatch": 1, "unreadable": 1, "smaller than 32 px": 1}


def test_split_by_file_is_disjoint_and_reproducible(tmp_path: Path) -> None:
    samples = [D.Sample(sharp=tmp_path / f"{i}.png") for i in range(40)]
    train, val = D.split_by_file(samples, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36 and not set(train) & set(val)
    assert D.split_by_file(samples, 0.1, seed=3) == (train, val)
    assert D.split_by_file(samples, 0.1, seed=4)[1] != val


# --- crops and sampling ---------------------------------------------------------------------


def test_augment_transforms_both_images_alike() -> None:
    sharp = (torch.rand(3, 40, 50) * 200).to(torch.uint8)
    blur = sharp + 7
    seen = set()
    for seed in range(20):
        a, b = D.augment([sharp, blur], 16, gen(seed))
        assert a.shape == (3, 16, 16) and torch.equal(b, a + 7)
        seen.add(a.flatten()[:8].tolist().__repr__())
    assert len(seen) > 10  # crops and orientations vary


def test_crop_dataset_items_depend_only_on_the_key(tmp_path: Path) -> None:
    ds = D.CropDataset([D.Sample(sharp=save(tmp_path / "a.png", (80, 70)))], crop=32, seed=0)
    assert torch.equal(ds[5]["sharp"], ds[5]["sharp"])
    assert not torch.equal(ds[5]["sharp"], ds[6]["sharp"])
    assert ds[5]["sharp"].dtype == torch.uint8 and ds[5]["sharp"].shape == (3, 32, 32)


def test_sampler_resumes_mid_epoch_and_splits_ranks() -> None:
    sampler = D.EpochSampler(10, batch_size=3, seed=1)
    assert sampler.steps_per_epoch == 4
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 12 and {k % 10 for k in full} == set(range(10)) and all(20 <= k < 30 for k in full)
    sampler.set_epoch(2, skip_batches=3)
    assert list(sampler) == full[9:]
    sampler.set_epoch(3)
    assert [k % 10 for k in sampler] != [k % 10 for k in full]

    ranks = [D.EpochSampler(10, batch_size=2, seed=1, rank=r, world=2) for r in range(2)]
    streams = [list(s) for s in ranks]
    assert ranks[0].steps_per_epoch == 3 and all(len(s) == 6 for s in streams)
    assert {k for s in streams for k in s} == set(range(10))  # every file, wrapped to whole batches


def test_tiny_photo_set_still_fills_a_batch() -> None:
    sampler = D.EpochSampler(2, batch_size=8, seed=0, fixed=True)
    keys = list(sampler)
    assert len(keys) == 8 and set(keys) == {0, 1}
