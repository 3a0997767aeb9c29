"""The data of a training run: the train / validation split, and (blurred, sharp) batches on the device.

Every random choice is a function of (seed, key or step) (see data.py), so a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deblur_cli.training import data as D
from deblur_cli.training import shake
from deblur_cli.training import synthetic as S
from deblur_cli.errors import MsdnError
from deblur_cli.training.trainconfig import TrainConfig


@dataclass
class DataSplit:
    train: list[D.Sample]
    val: list[D.Sample]
    skipped: dict[str, int]


def prepare_data(config: TrainConfig) -> DataSplit:
    """Scan, check and split the data folders (every user error surfaces here, before training)."""
    if not config.data:
        raise MsdnError("no training data: pass --data DIR")
    scan = D.find_samples(Path(config.data), synthetic=config.synthetic_blur, blur_folder=config.blur_folder,
                          skip_bad=config.skip_bad)
    checked = D.check_samples(scan, config.crop, config.skip_bad)
    if not checked.samples:
        reasons = ", ".join(f"{n} {why}" for why, n in checked.skipped.items())
        raise MsdnError(f"no usable training images in {config.data} ({reasons}); use a smaller --crop")
    skipped = dict(checked.skipped)
    if config.fixed_crops:
        return DataSplit(checked.samples, [], skipped)
    if config.val_data:
        val_scan = D.find_samples(Path(config.val_data), synthetic=config.synthetic_blur,
                                  blur_folder=config.blur_folder, skip_bad=config.skip_bad)
        val_checked = D.check_samples(val_scan, config.val_crop or 1, config.skip_bad)
        for why, n in val_checked.skipped.items():
            skipped[f"validation: {why}"] = n
        return DataSplit(checked.samples, val_checked.samples, skipped)
    train, val = D.split_by_file(checked.samples, config.val_fraction, config.seed)
    if not train:
        raise MsdnError("the validation split left no training images; lower --val-fraction")
    return DataSplit(train, val, skipped)


def _to_float(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_pair(batch: dict[str, Any], config: TrainConfig, device: torch.device,
               channels_last: bool) -> tuple[Tensor, Tensor]:
    """(blurred, sharp) float batch on the device from a loader batch: a pair on disk, or a fixed
    crop that always gets the same blur (seeded by its key)."""
    sharp = _to_float(batch["sharp"], device, channels_last)
    if "blur" in batch:
        return _to_float(batch["blur"], device, channels_last), sharp
    parts = [_blur(sharp[i:i + 1], config, device, D.mix_seed(config.seed, 0xB1, int(k)))
             for i, k in enumerate(batch["key"])]
    return torch.cat(parts), sharp


def _blur(sharp: Tensor, config: TrainConfig, device: torch.device, seed: int) -> Tensor:
    """Blur whole crops (fixed crops and validation photos): the blur margin is reflected in."""
    generator = torch.Generator().manual_seed(seed)
    m = shake.margin_for(config.blur_strength[1])
    padded = torch.nn.functional.pad(sharp.float().cpu(), (m, m, m, m), mode="reflect" if m < min(sharp.shape[-2:])
                                     else "replicate")
    blurred, _ = shake.blur(padded, config.blur_families, config.blur_strength, generator, config.realism)
    return blurred.to(device, sharp.dtype)


def _batches(loader: DataLoader, sampler: D.EpochSampler, start: int, total: int) -> Iterator[tuple[int, dict]]:
    """(step, batch) from `start` to `total`, entering each epoch at the right batch."""
    step = start
    while step < total:
        epoch, skip = divmod(step, sampler.steps_per_epoch)
        sampler.set_epoch(epoch, skip)
        for batch in loader:
            yield step, batch
            step += 1
            if step >= total:
                return


class StepBatches(Dataset):
    """Step -> synthetic (blurred, sharp) CPU batch. A pure function of the step, so worker processes
    can render steps ahead in any order and the run still sees exactly the batches it would alone."""

    def __init__(self, bank: S.PhotoBank, config: TrainConfig, seed: int, total: int) -> None:
        self.bank, self.config, self.seed, self.total = bank, config, seed, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, step: int) -> tuple[Tensor, Tensor]:
        c = self.config
        return S.training_pair(self.bank, c.batch_size, c.crop, c.blur_families, c.blur_strength, c.realism,
                               self.seed, step, c.crop_scales, c.crop_tries, c.frame_mix, c.still_share)


def rendered(batches: StepBatches, start: int, workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of steps `start`.. in order, rendered by `workers` processes ahead of use (or here)."""
    if workers == 0:
        return (batches[step] for step in range(start, len(batches)))
    return iter(DataLoader(batches, batch_size=None, sampler=range(start, len(batches)), num_workers=workers,
                           prefetch_factor=4))


def pairs(loader: DataLoader | None, sampler: D.EpochSampler, bank: S.PhotoBank | None, config: TrainConfig,
          device: torch.device, start: int, total: int, rank: int,
          channels_last: bool) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(step, blurred, sharp) float batches on the device: from the in-memory photo bank
    (synthetic blur), else from the loader (pairs on disk, fixed crops)."""
    if bank is None:
        assert loader is not None
        for step, batch in _batches(loader, sampler, start, total):
            yield step, *make_pair(batch, config, device, channels_last)
        return
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = StepBatches(bank, config, D.mix_seed(config.seed, rank), total)
    for step, (blurred, sharp) in enumerate(rendered(batches, start, config.render_workers), start):
        yield (step, blurred.to(device).contiguous(memory_format=memory_format),
               sharp.to(device).contiguous(memory_format=memory_format))
