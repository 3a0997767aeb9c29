"""Validation during training: fixed pairs scored the same way every time, so scores compare across steps.

Validation draws no random numbers (exact resume); the blur of its pairs is fixed by the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deblur_cli.training import data as D
from deblur_cli.training import synthetic as S
from deblur_cli.errors import MsdnError
from deblur_cli.inference.engine import autocast, deblur
from deblur_cli.evaluation.metrics import psnr, ssim
from deblur_cli.nets.model import MSDN
from deblur_cli.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from deblur_cli.training.trainconfig import TrainConfig
from deblur_cli.training.trainingdata import DataSplit, make_pair

VAL_CROP = 256  # side of the validation crops of synthetic-blur runs
VAL_REAL_CROP = 512  # side of the centre crops of real-blur pairs (--val-real): 25 REDS frames in ~15 s on a core
DIRECT_PIXELS = 1 << 21  # validate photos up to ~2 MP in one pass, tile larger ones


class Validation:
    """Fixed validation pairs of paired data on disk, or of the fixed crops of an overfit check
    (their blur made once, kept as 8-bit like saved photos)."""

    metric = "psnr"  # what "psnr" (which picks the best weights) means; stored with the best value

    def __init__(self, config: TrainConfig, split: DataSplit, device: torch.device) -> None:
        self.config, self.device = config, device
        self.pairs: list[tuple[Tensor, Tensor]] | None = None
        self.split = split

    def __len__(self) -> int:
        return len(self.split.train) if self.config.fixed_crops else len(self.split.val)

    def _build(self) -> list[tuple[Tensor, Tensor]]:
        cfg = self.config
        if cfg.fixed_crops:  # the training crops themselves, with the blur training gives them
            dataset: D.CropDataset | D.WholeDataset = D.CropDataset(self.split.train, cfg.crop, cfg.seed)
        else:
            dataset = D.WholeDataset(self.split.val)
        pairs = []
        for key in range(len(dataset)):
            batch = {k: (v[None] if isinstance(v, Tensor) else [v]) for k, v in dataset[key].items()}
            if cfg.fixed_crops:
                blurred, _ = make_pair(batch, cfg, self.device, False)
                batch["blur"] = _to_uint8(blurred)
            elif cfg.val_crop:  # pairs on disk (synthetic blur validates in SyntheticValidation)
                batch = {k: (_centre(v, cfg.val_crop) if isinstance(v, Tensor) else v) for k, v in batch.items()}
            pairs.append((batch["blur"], batch["sharp"]))
        return pairs

    def run(self, generator: MSDN, amp: str | None) -> dict[str, float]:
        """Mean PSNR and SSIM of the generator (eval mode) over the pairs.

        Photos up to `DIRECT_PIXELS` go through the network whole, as it sees training crops;
        larger ones are tiled with the tool's default tiling (tiling.py), as `msdn deblur --weights`
        tiles them, so validation never runs out of memory and scores what users get.
        """
        if self.pairs is None:
            self.pairs = self._build()
        was_training = generator.training
        generator.eval()
        scores_p, scores_s = [], []
        try:
            for blurred, sharp in self.pairs:
                image = blurred.float() / 255.0
                if image.shape[-2] * image.shape[-1] <= DIRECT_PIXELS:
                    with torch.no_grad(), autocast(amp, self.device):
                        out = generator(image.to(self.device)).float().cpu()
                else:
                    out = deblur(generator, image, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, amp=amp)
                target = sharp.float() / 255.0
                scores_p.append(float(psnr(out, target)[0]))
                scores_s.append(float(ssim(out, target)[0]))
        finally:
            generator.train(was_training)
        return {"psnr": sum(scores_p) / len(scores_p), "ssim": sum(scores_s) / len(scores_s)}


class SyntheticValidation:
    """Fixed blurred centre crops of the validation photos per level and family group (synthetic.py).

    Scores raw and aligned PSNR/SSIM and their gain over the blurred input; "psnr" (what picks the
    best weights) is the pooled aligned PSNR on the *training* families (`synthetic.score` says
    why pooled), so the held-out family stays a pure measurement.
    """

    metric = "train/psnr_pooled"

    def __init__(self, config: TrainConfig, split: DataSplit, device: torch.device) -> None:
        self.config, self.device, self.split = config, device, split
        self.pairs: list[S.ValPair] | None = None
        self.baseline: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.split.val)

    def run(self, generator: MSDN, amp: str | None) -> dict[str, float]:
        if self.pairs is None:
            size = self.config.val_crop or VAL_CROP
            self.pairs = S.validation_pairs(self.split.val, size, self.config.seed)
            self.pairs += S.still_pairs(self.split.val, size, self.config.seed)
            if self.config.val_real:
                self.pairs += real_pairs(self.config.val_real, VAL_REAL_CROP)
            self.baseline = S.score(None, self.pairs, self.config.val_align)
        was_training = generator.training
        generator.eval()

        def run(x: Tensor) -> Tensor:
            with torch.no_grad(), autocast(amp, self.device):
                return generator(x.to(self.device))

        try:
            scores = S.score(run, self.pairs, self.config.val_align)
        finally:
            generator.train(was_training)
        gains = {f"{k}_gain": v - self.baseline[k] for k, v in scores.items() if "psnr" in k or "grad" in k}
        return {"psnr": scores[self.metric], "ssim": scores["train/ssim_aligned"], **scores, **gains}


def real_pairs(folder: str, size: int) -> list[S.ValPair]:
    """Centre crops of a paired real-blur folder (ROOT/{blur,sharp}) as the "real" group, one level "all"."""
    scan = D.find_samples(Path(folder))
    pairs = []
    for sample in scan.samples:
        assert sample.blur is not None
        blurred, sharp = (S.centre(D.read_rgb(p), size)[None] for p in (sample.blur, sample.sharp))
        pairs.append(S.ValPair("real", "all", Path(sample.sharp).stem, blurred, sharp))
    if not pairs:
        raise MsdnError(f"no real-blur pairs in {folder} (expected {folder}/blur and {folder}/sharp)")
    return pairs


def best_so_far(checkpoint: dict[str, Any], metric: str) -> float | None:
    """The checkpoint's best validation score if it was scored by `metric`, else None (the next
    validation sets it). Checkpoints from before "best_metric" was stored scored synthetic-blur
    runs by the mean aligned PSNR of the training families."""
    legacy = "psnr" if metric == "psnr" else "train/psnr_aligned"
    return checkpoint["best_val_psnr"] if checkpoint.get("best_metric", legacy) == metric else None


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round().to(torch.uint8).cpu()


def _centre(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    size_h, size_w = min(size, h), min(size, w)
    top, left = (h - size_h) // 2, (w - size_w) // 2
    return x[..., top:top + size_h, left:left + size_w]
