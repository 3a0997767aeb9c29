"""DeblurGAN's generator (deblur_cli/nets/deblurgan.py) and the `arch` field that names a network in every file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn
from typer.testing import CliRunner

from conftest import TINY

from deblur_cli.weights import resolve as w
from deblur_cli.nets.architectures import arch_of, build, config_from_dict, default_config
from deblur_cli.weights.checkpoint import load_checkpoint
from deblur_cli.cli import app
from deblur_cli.nets.deblurgan import DeblurGAN, DeblurGANConfig, ResBlock
from deblur_cli.errors import MsdnError
from deblur_cli.nets.model import MSDN, MSDNConfig, count_parameters
from deblur_cli.weights.weightfile import build_generator, save_weights

SMALL = DeblurGANConfig(channels=4, blocks=1)


def test_default_generator_is_deblurgans_11_4_m_parameters_in_the_papers_order():
    model = DeblurGAN()
    assert count_parameters(model) == 11_378_179  # Kupyn et al.: about 11.4 M
    body = list(model.body)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert (convs[0].kernel_size, convs[0].out_channels) == ((7, 7), 64)
    assert [c.stride for c in convs[1:3]] == [(2, 2), (2, 2)] and convs[2].out_channels == 256
    blocks = [m for m in body if isinstance(m, ResBlock)]
    assert len(blocks) == 9 and all(b.body[4].p == 0.5 for b in blocks)
    assert [type(m).__name__ for m in blocks[0].body] == ["ReflectionPad2d", "Conv2d", "InstanceNorm2d", "ReLU",
                                                          "Dropout", "ReflectionPad2d", "Conv2d", "InstanceNorm2d"]
    ups = [c for c in convs if isinstance(c, nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [128, 64]
    assert (convs[-1].kernel_size, convs[-1].out_channels) == ((7, 7), 3)


@pytest.mark.parametrize("h, w", [(37, 50), (64, 64)])
def test_starts_as_the_identity_and_keeps_any_size(h: int, w: int):
    x = torch.rand(2, 3, h, w)
    model = DeblurGAN(SMALL).eval()
    assert torch.equal(model(x), x)  # zero last conv (the original started random: see the module docstring)
    torch.manual_seed(0)
    nn.init.normal_(model.head[1].weight, std=0.1)
    y = model(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(y, x)


def test_arch_round_trips_through_config_dicts_weight_files_and_checkpoints(tmp_path: Path):
    assert config_from_dict(json.loads(SMALL.to_json())) == SMALL and SMALL.to_dict()["arch"] == "deblurgan"
    assert config_from_dict(TINY.to_dict()) == TINY and "arch" not in TINY.to_dict()  # MSDN files stay as they were
    assert [arch_of(default_config(a)) for a in ("msdn", "dn", "deblurgan")] == ["msdn", "dn", "deblurgan"]
    torch.manual_seed(0)
    model = DeblurGAN(SMALL)
    nn.init.normal_(model.head[1].weight, std=0.1)
    path = tmp_path / "g.safetensors"
    save_weights(path, model.state_dict(), SMALL)
    loaded = w.load_generator(weights=path)
    assert isinstance(loaded, DeblurGAN) and loaded.config == SMALL
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    ckpt = tmp_path / "g.pt"
    torch.save({"generator": model.state_dict(), "model_config": SMALL.to_dict()}, ckpt)
    assert load_checkpoint(ckpt).config == SMALL


def test_unknown_or_mismatched_architecture_is_one_line(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown architecture 'unet' \\(this msdn knows msdn, deblurgan\\)"):
        config_from_dict({"arch": "unet"})
    path = tmp_path / "odd.safetensors"
    save_weights(path, DeblurGAN(SMALL).state_dict(), SMALL, metadata={"msdn_config": '{"arch": "unet"}'})
    with pytest.raises(MsdnError, match=f"{path} metadata holds an invalid model config: unknown architecture 'unet'"):
        w.load_generator(weights=path)
    with pytest.raises(MsdnError, match="weights do not fit the model: missing key"):
        build_generator(TINY, DeblurGAN(SMALL).state_dict())  # DeblurGAN weights, an MSDN config
    assert isinstance(build(TINY), MSDN) and isinstance(build(MSDNConfig(pyramid=False)), MSDN)


def test_train_arch_flag_trains_and_resumes_deblurgan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()[:64, :80]).save(photos / f"{name}.png")
    run = tmp_path / "run"
    common = ["--workers", "0", "--device", "cpu", "--checkpoint-dir", str(run)]
    runner = CliRunner()
    bad = runner.invoke(app, ["train", "--data", str(photos), "--arch", "deblurgan", "--growth-rate", "8", *common])
    assert bad.exit_code == 1 and "--growth-rate applies to msdn and dn, not deblurgan" in bad.output
    bad = runner.invoke(app, ["train", "--data", str(photos), "--arch", "resnet", *common])
    assert bad.exit_code == 1 and "unknown --arch 'resnet'; use msdn, dn, deblurgan" in bad.output
    monkeypatch.setattr("deblur_cli.nets.architectures.default_config", lambda arch: SMALL)  # a small one, for speed
    first = runner.invoke(app, ["train", "--data", str(photos), "--synthetic-blur", "--arch", "deblurgan", "--steps",
                                "2", "--crop", "32", "--batch-size", "2", "--blur-strength", "1,4", "--val-fraction",
                                "0.25", *common])
    assert first.exit_code == 0, first.output
    stored = load_checkpoint(run / "last.pt")
    assert stored.config == DeblurGANConfig(channels=4, blocks=1, dropout=0.0)  # the CPU recipe's dropout
    again = runner.invoke(app, ["train", "--resume", str(run), "--arch", "msdn", "--steps", "3"])
    assert again.exit_code == 1 and "--arch cannot change on --resume (the run's network is deblurgan)" in again.output
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--steps", "3", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert isinstance(w.load_generator(weights=run / "best.safetensors"), DeblurGAN)
