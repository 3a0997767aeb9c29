"""Files written by earlier msdn releases keep loading, bit for bit.

`tests/fixtures/micro-step2.pt` (a training checkpoint, `last.pt`) and `micro-step2.safetensors`
(the `best.safetensors` the same run exported) were written by `msdn train` at commit 4cc2d07, before
the weights module was split by job (issue 11): a micro generator, 2 steps, EMA on. The expected
numbers below were measured then.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deblur_cli.training import train as T
from deblur_cli.weights.checkpoint import load_checkpoint, load_training_checkpoint
from deblur_cli.nets.model import MSDNConfig
from deblur_cli.weights.weightfile import read_metadata
from deblur_cli.weights.resolve import load_generator

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "micro-step2.pt"
WEIGHTS = FIXTURES / "micro-step2.safetensors"
MICRO = MSDNConfig(stem_channels=4, growth_rate=2, encoder_layers=(1,), bottleneck_layers=1, decoder_layers=(1,),
                   pyramid_pools=(2,), dropout=0.0)
EXPECTED_SUM = 847.0933230249211  # of the generator's output on `probe()`, measured at 4cc2d07
EXPECTED_FIRST = [0.018670236691832542, 0.08995063602924347, 0.29678016901016235, 0.01474803127348423]


def probe() -> torch.Tensor:
    return torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(3))


def output(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return load_generator(weights=path).eval()(probe())


def test_old_training_checkpoint_loads_unchanged() -> None:
    ckpt = load_checkpoint(CHECKPOINT)
    assert ckpt.config == MICRO and ckpt.step == 2
    assert ckpt.metrics == {"best_val_psnr": pytest.approx(38.1801124427672)}
    raw = torch.load(CHECKPOINT, weights_only=True)
    assert all(torch.equal(v, raw["ema"][f"module.{k}"]) for k, v in ckpt.generator.items())  # ships the EMA
    assert load_training_checkpoint(CHECKPOINT)["step"] == 2  # `msdn train --resume` still reads it
    assert T.TrainConfig.from_dict(raw["train_config"]).ema_decay == 0.5
    y = output(CHECKPOINT)
    assert y.double().sum().item() == pytest.approx(EXPECTED_SUM, rel=1e-6)
    assert y.flatten()[:4].tolist() == pytest.approx(EXPECTED_FIRST, abs=1e-6)


def test_old_weight_file_loads_unchanged() -> None:
    meta = read_metadata(WEIGHTS)
    assert meta["step"] == "2" and meta["val_psnr"] == "38.1801"
    assert torch.equal(output(WEIGHTS), output(CHECKPOINT))  # the exported best is the step-2 EMA
