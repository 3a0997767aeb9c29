"""The generator: shapes, identity start, config round trip, fused inference, pinned size."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deblur_cli.nets.model import (
    MSDN,
    DenseBlock,
    DenseLayer,
    DownLayer,
    MSDNConfig,
    PyramidPooling,
    UpLayer,
    count_parameters,
    fuse_for_inference,
    pad_to_multiple,
)
from conftest import TINY



def randomize_head(model: MSDN, seed: int = 0) -> MSDN:
    """The head starts at zero (identity net); give it weights so outputs depend on the body."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.05)
    return model


def test_config_json_round_trip_keeps_tuples_and_equality():
    cfg = MSDNConfig(growth_rate=8, encoder_layers=(2, 3), decoder_layers=(3, 2), pyramid=False)
    back = MSDNConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.encoder_layers, tuple)
    assert hash(back) == hash(cfg)


def test_config_rejects_unknown_keys_and_bad_levels():
    with pytest.raises(ValueError, match="unknown MSDN config keys: colour"):
        MSDNConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="one entry per level"):
        MSDNConfig(encoder_layers=(1, 1), decoder_layers=(1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        MSDNConfig().growth_rate = 3  # type: ignore[misc]


def test_untrained_network_is_the_identity():
    model = MSDN(TINY).eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(x), x)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), pyramid=st.booleans())
def test_any_size_in_gives_same_size_out_in_unit_range(h, w, pyramid):
    model = randomize_head(MSDN(dataclasses.replace(TINY, pyramid=pyramid))).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, h, w))
    assert y.shape == (2, 3, h, w)
    assert y.min() >= 0 and y.max() <= 1


def test_pad_to_multiple_pads_bottom_right_only():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    y = pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y[..., :3, :4], x)
    assert pad_to_multiple(x[..., :1, :1], 16).shape == (1, 1, 16, 16)  # 1x1: replicate fallback


def test_fused_model_matches_weight_normalised_model():
    model = randomize_head(MSDN(TINY)).eval()
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        before = model(x)
        fused = fuse_for_inference(model)
        after = fused(x)
    assert not any(hasattr(m, "parametrizations") for m in fused.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_dropout_is_active_in_training_only():
    model = randomize_head(MSDN(TINY))
    x = torch.rand(1, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_layers_follow_the_paper_order():
    layer = DenseLayer(8, 4, 0.2)
    kinds = (nn.Conv2d, nn.PReLU, nn.Dropout2d)
    assert len(layer) == 3 and all(isinstance(m, k) for m, k in zip(layer, kinds))
    assert layer[0].kernel_size == (3, 3) and hasattr(layer[0], "parametrizations")  # weight norm
    down = DownLayer(8, 0.2)
    kinds = (nn.Conv2d, nn.PReLU, nn.Dropout2d, nn.MaxPool2d)
    assert len(down) == 4 and all(isinstance(m, k) for m, k in zip(down, kinds))
    assert down[0].kernel_size == (1, 1)
    up = UpLayer(8, 6)
    assert isinstance(up[0], nn.ConvTranspose2d) and up[0].stride == (2, 2) and up[0].kernel_size == (3, 3)
    assert up(torch.rand(1, 8, 5, 7)).shape == (1, 6, 10, 14)


def test_dense_block_concatenates_every_earlier_output():
    block = DenseBlock(8, 3, 4, 0.0)
    assert [lay[0].in_channels for lay in block.layers] == [8, 12, 16]
    x = torch.rand(1, 8, 6, 6)
    y = block(x)
    assert y.shape == (1, 20, 6, 6) and torch.equal(y[:, :8], x)  # block input passes through
    assert DenseBlock(8, 3, 4, 0.0, new_only=True)(x).shape == (1, 12, 6, 6)


def test_pyramid_concatenates_four_pooled_scales_upsampled_back():
    pyr = PyramidPooling(16, (2, 4, 8, 16))
    x = torch.rand(1, 16, 16, 24)
    y = pyr(x)
    assert y.shape == (1, 16 + 4 * 4, 16, 24)
    assert torch.equal(y[:, :16], x)


def test_pyramid_widens_the_receptive_field():
    """A pixel far outside the dense path's reach still moves the output when the pyramid is on."""
    cfg = dataclasses.replace(TINY, encoder_layers=(1,), decoder_layers=(1,), pyramid_pools=(16,))  # global pooling at 16x16

    def sensitivity(pyramid: bool) -> float:
        torch.manual_seed(0)
        model = randomize_head(MSDN(dataclasses.replace(cfg, pyramid=pyramid))).eval()
        x = torch.rand(1, 3, 64, 64, requires_grad=True)
        model(x)[0, :, 0, 0].sum().backward()
        return x.grad[..., 40:, 40:].abs().sum().item()

    assert sensitivity(pyramid=False) == 0.0
    assert sensitivity(pyramid=True) > 0.0


def test_default_size_is_pinned():
    """The module docstring quotes these figures; a width change must update them."""
    model = fuse_for_inference(MSDN())
    assert count_parameters(MSDN()) == pytest.approx(1.45e6, rel=0.01)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, 256, 256))
    assert counter.get_total_flops() / 2 == pytest.approx(4.89e9, rel=0.01)


def test_dn_ablation_drops_only_the_pyramid():
    msdn, dn = MSDN(MSDNConfig()), MSDN(MSDNConfig(pyramid=False))
    assert isinstance(dn.pyramid, nn.Identity)
    assert count_parameters(dn) < count_parameters(msdn)


def test_scale_recurrence_shares_weights_and_runs_coarse_to_fine():
    """scales=2: the same weights at half then full scale; the full pass starts from its blurred
    input plus the half pass's correction, upsampled. No new parameters; identity at initialisation."""
    two = dataclasses.replace(TINY, scales=2)
    one_net, two_net = MSDN(TINY).eval(), MSDN(two).eval()  # eval: no dropout
    assert count_parameters(one_net) == count_parameters(two_net) and two.size_multiple == 2 * TINY.size_multiple
    x = torch.rand(1, 3, 2 * two.size_multiple, 3 * two.size_multiple)
    assert torch.equal(two_net(x), x)  # zero head: every pass is the identity
    torch.manual_seed(0)
    for p in one_net.parameters():
        nn.init.normal_(p, std=0.05)
    two_net.load_state_dict(one_net.state_dict())
    half = torch.nn.functional.avg_pool2d(x, 2)
    correction = one_net.restore(half) - half
    start = x + torch.nn.functional.interpolate(correction, scale_factor=2, mode="bilinear", align_corners=False)
    expected = one_net.restore(start).clamp(0, 1)
    assert torch.allclose(two_net(x), expected, atol=1e-6) and not torch.allclose(two_net(x), one_net(x), atol=1e-3)
    outputs = two_net(x, all_scales=True)  # deep supervision's view: coarsest first, the last is the output
    assert [o.shape[-2:] for o in outputs] == [half.shape[-2:], x.shape[-2:]]
    assert torch.allclose(outputs[0], one_net.restore(half).clamp(0, 1), atol=1e-6)
    assert torch.equal(outputs[-1], two_net(x))
    assert MSDNConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "scales"}) == TINY  # older files
    with pytest.raises(ValueError, match="scales must be 1..4"):
        dataclasses.replace(TINY, scales=0)
