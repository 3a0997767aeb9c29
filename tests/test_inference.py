"""Tiled inference: stitched output equals a whole-image pass, devices, amp, progress, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from deblur_cli.errors import MsdnError
from deblur_cli.imaging.planes import PIXEL_DTYPES, hwc, quantize, to_float
from deblur_cli.inference.engine import deblur, prepare_model, select_device
from deblur_cli.inference.tiling import axis_windows, plan_image, source_indices
from deblur_cli.nets.model import MSDN, MSDNConfig
from conftest import TINY



def pointwise_model() -> nn.Module:
    """y = 0.5 * x + 0.1 per channel, as a 1x1 conv so it has parameters and a device."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * 0.5)
        conv.bias.fill_(0.1)
    return conv.eval()


def small_conv_model(seed: int = 0) -> nn.Module:
    """Receptive-field radius 2 (two 3x3 convs, zero padding); sigmoid keeps the output in [0, 1]."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 3, 3, padding=1), nn.Sigmoid()).eval()


def tiny_msdn(seed: int = 0) -> MSDN:
    torch.manual_seed(seed)
    model = MSDN(TINY)
    with torch.no_grad():  # the head starts at zero (identity); make the body matter
        model.head.weight.normal_(0, 0.05)
    return model.eval()


def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def reflect_padded_pass(model: nn.Module, image: torch.Tensor, pad: int) -> torch.Tensor:
    """Independent reference: numpy's (repeated) reflect padding, one whole-image call, crop."""
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    with torch.no_grad():
        out = model(torch.from_numpy(padded))
    h, w = image.shape[-2:]
    return out[..., pad : pad + h, pad : pad + w]


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from([24, 32, 64]), st.data())
def test_pointwise_model_stitches_to_exactly_the_whole_image(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile // 2))  # a stride of a few pixels would mean 10^4 tiles
    batch = data.draw(st.integers(1, 5))
    image = random_image(h, w)
    model = pointwise_model()
    out = deblur(model, image, tile=tile, overlap=overlap, batch_size=batch)
    assert out.shape == image.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, image * 0.5 + 0.1, atol=1e-6, rtol=0)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(2, 16), st.data())
def test_pointwise_stitching_holds_for_any_overlap_on_small_images(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    image = random_image(h, w)
    out = deblur(pointwise_model(), image, tile=tile, overlap=overlap, batch_size=16)
    torch.testing.assert_close(out, image * 0.5 + 0.1, atol=1e-6, rtol=0)


@settings(max_examples=10, deadline=None)
@given(st.integers(20, 1000), st.integers(20, 700), st.sampled_from([32, 48, 64]), st.integers(8, 20))
def test_small_receptive_field_model_matches_reflect_padded_whole_pass(h, w, tile, overlap):
    # radius 2 <= overlap // 4: guard bands hide every tile-edge artefact, so the match is exact
    # (for axes at least `overlap` long: a thinner one is padded only to the model's multiple).
    image = random_image(h, w, seed=h * 1000 + w)
    model = small_conv_model()
    out = deblur(model, image, tile=tile, overlap=overlap, batch_size=8)
    torch.testing.assert_close(out, reflect_padded_pass(model, image, overlap // 2), atol=1e-5, rtol=0)


def test_seams_would_show_without_guard_bands():
    """Sanity check of the test above: a radius-3 model with overlap 8 (guard 2) is not exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 7, padding=3), nn.Sigmoid()).eval()
    image = random_image(96, 96)  # padded 104 = 4 tiles of 32 overlapping by exactly 8
    out = deblur(model, image, tile=32, overlap=8)
    error = (out - reflect_padded_pass(model, image, 4)).abs().max().item()
    assert error > 1e-4


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (37, 61), (130, 17), (97, 200)])
def test_tiny_msdn_runs_on_odd_sizes(h, w):
    model = prepare_model(tiny_msdn(), torch.device("cpu"))
    image = random_image(h, w)
    out = deblur(model, image, tile=64, overlap=16)
    assert out.shape == (1, 3, h, w)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out - image).abs().max() > 1e-4  # the network did something


def test_image_within_one_tile_is_one_whole_reflect_padded_pass():
    model = prepare_model(tiny_msdn(), torch.device("cpu"))
    image = random_image(45, 70)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    out = deblur(model, image, tile=128, overlap=16)
    assert calls == [(1, 3, 45 + 16, 70 + 16)]
    torch.testing.assert_close(out, reflect_padded_pass(model, image, 8), atol=1e-5, rtol=0)


def test_tiles_stream_in_batches_of_the_tile_size():
    model = small_conv_model()
    shapes = []
    model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    deblur(model, random_image(300, 500), tile=64, overlap=16, batch_size=3)
    # Tiles shrink to the smallest size that needs no more tiles: (316+6*16)/7 -> 59, (516+10*16)/11 -> 62.
    assert all(s[-2:] == (59, 62) for s in shapes)
    assert [s[0] for s in shapes[:-1]] == [3] * (len(shapes) - 1) and 1 <= shapes[-1][0] <= 3
    # 300x500 + 2*8 pad: ceil((316-16)/48)=7 rows by ceil((516-16)/48)=11 columns of tiles.
    assert sum(s[0] for s in shapes) == 7 * 11


def test_a_one_pixel_strip_costs_its_model_multiple_not_a_padded_tile():
    model = small_conv_model()
    model.size_multiple = 16
    shapes = []
    model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    out = deblur(model, random_image(1, 2000), tile=256, overlap=32, batch_size=4)
    assert out.shape == (1, 3, 1, 2000)
    assert {s[-2] for s in shapes} == {15}  # not 1 + 2 * 16 rows per tile


def test_batch_size_does_not_change_the_result():
    model = prepare_model(tiny_msdn(1), torch.device("cpu"))
    image = random_image(150, 110, seed=3)
    results = [deblur(model, image, tile=64, overlap=16, batch_size=b) for b in (1, 3, 64)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=0)


def test_progress_reports_every_batch_up_to_the_total():
    calls = []
    # 100x70, tile 32, overlap 8, border pad 4: padded 108x78 -> ceil(100/24)=5 by ceil(70/24)=3 tiles.
    deblur(pointwise_model(), random_image(100, 70), tile=32, overlap=8, batch_size=4,
           progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 15), (4, 15), (8, 15), (12, 15), (15, 15)]


def test_input_is_not_modified():
    image = random_image(80, 80)
    before = image.clone()
    deblur(small_conv_model(), image, tile=32, overlap=8)
    assert torch.equal(image, before)


def whole_buffer_deblur(model: nn.Module, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The tiling before bands: every tile, one at a time, added into a whole-image float output."""
    rows, cols = plan_image(*image.shape[-2:], tile, overlap)
    wr, wc = axis_windows(rows), axis_windows(cols)
    output = torch.zeros_like(image)
    with torch.no_grad():
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                cut = image.index_select(2, source_indices(row, image.shape[2]))
                result = model(cut.index_select(3, source_indices(col, image.shape[3])))[0]
                (r0, r1), (c0, c1) = row.keep, col.keep
                crop = result[:, r0 - row.start : r1 - row.start, c0 - col.start : c1 - col.start]
                output[0, :, r0:r1, c0:c1] += crop * (wr[r].float()[:, None] * wc[c].float()[None, :])
    return output.clamp_(0.0, 1.0)


class BoxBlur(nn.Module):
    """3x3 mean: a model whose every output pixel is computed the same way whatever the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) * self.gain


def test_bands_sum_bit_for_bit_as_a_whole_image_buffer():
    """Only a band of rows is float at a time, yet every pixel's sum is the one a whole-image buffer gets."""
    model, image = BoxBlur().eval(), random_image(170, 130, seed=4)
    expected = whole_buffer_deblur(model, image, 48, 16)
    for batch in (1, 4, 7):  # batches that end inside a tile row, and span two
        assert torch.equal(deblur(model, image, tile=48, overlap=16, batch_size=batch), expected)


@pytest.mark.parametrize("bits", [8, 16])
def test_integer_photo_gives_the_float_result_rounded_as_save_image_rounds(bits):
    """uint8 / uint16 levels in: the same dtype out, bit for bit the float path's output quantized."""
    levels = torch.randint(0, 2**bits, (1, 3, 150, 170), generator=torch.Generator().manual_seed(bits))
    levels = levels.to(PIXEL_DTYPES[bits])
    model = small_conv_model()
    as_float = deblur(model, to_float(levels), tile=48, overlap=16, batch_size=5)
    out = deblur(model, levels, tile=48, overlap=16, batch_size=5)
    assert out.dtype == PIXEL_DTYPES[bits] and out.shape == levels.shape
    np.testing.assert_array_equal(hwc(out), quantize(hwc(as_float), bits))
    assert hwc(out).flags.c_contiguous  # (H, W, C) in memory: encoders take it without a copy


def test_finished_rows_leave_in_order_in_bands_of_at_most_a_tile():
    seen = []

    def finish(rows: torch.Tensor, first: int) -> torch.Tensor:
        assert rows.dtype == torch.float32 and 0 <= rows.min() and rows.max() <= 1
        seen.append((first, rows.shape[2]))
        return rows[:, :1].mul(255).round().to(torch.uint8)  # any channels and dtype

    levels = torch.randint(0, 256, (1, 3, 300, 90), dtype=torch.uint8)
    out = deblur(pointwise_model(), levels, tile=64, overlap=16, batch_size=3, finish=finish)
    assert out.shape == (1, 1, 300, 90) and out.dtype == torch.uint8
    assert [first for first, _ in seen] == list(np.cumsum([0] + [h for _, h in seen[:-1]]))
    assert sum(h for _, h in seen) == 300 and max(h for _, h in seen) <= 64 and len(seen) > 4


def test_only_msdns_pixel_dtypes_are_taken():
    with pytest.raises(ValueError, match="uint8 or torch.uint16"):
        deblur(pointwise_model(), torch.zeros(1, 3, 20, 20, dtype=torch.int32))


def test_prepare_model_fuses_weight_norm_and_keeps_outputs():
    model = tiny_msdn(2)
    image = random_image(64, 48)
    with torch.no_grad():
        expected = model(image)
    prepared = prepare_model(model, torch.device("cpu"))
    assert not any(isinstance(m, nn.Module) and hasattr(m, "parametrizations") for m in prepared.modules())
    assert not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())
    conv = prepared.stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(prepared(image), expected, atol=1e-5, rtol=0)
    plain = prepare_model(tiny_msdn(2), torch.device("cpu"), channels_last=False)
    assert plain.stem.weight.is_contiguous()


def test_weight_norm_check_in_fuse_test_can_fail():
    # Guard for the assertion above: an unfused weight-normed conv does expose `parametrizations`.
    assert hasattr(weight_norm(nn.Conv2d(1, 1, 1)), "parametrizations")


def test_amp_fp16_is_refused_on_cpu_and_unknown_modes():
    with pytest.raises(MsdnError, match=r"mixed precision \(fp16\) needs a CUDA device"):
        deblur(pointwise_model(), random_image(8, 8), amp="fp16")
    with pytest.raises(MsdnError, match="unknown mixed precision"):
        deblur(pointwise_model(), random_image(8, 8), amp="int8")


def test_cpu_bf16_runs_in_bf16_and_stays_close_to_fp32():
    model = MSDN(MSDNConfig(stem_channels=8, growth_rate=4, encoder_layers=(1, 1), decoder_layers=(1, 1),
                            bottleneck_layers=1, pyramid_pools=(2,), dropout=0.0)).eval()
    nn.init.normal_(model.head.weight, std=0.05)
    image = random_image(40, 48)
    fp32 = deblur(model, image, tile=32, overlap=8)
    bf16 = deblur(model, image, tile=32, overlap=8, amp="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # bf16 really ran
    assert (bf16 - fp32).abs().max() < 0.02


def test_amp_auto_resolves_to_bf16_only_with_native_support(monkeypatch):
    import deblur_cli.inference.engine as I

    monkeypatch.setattr(I, "cpu_has_native_bf16", lambda: False)
    assert I.resolve_amp("auto", torch.device("cpu")) is None
    monkeypatch.setattr(I, "cpu_has_native_bf16", lambda: True)
    assert I.resolve_amp("auto", torch.device("cpu")) == "bf16"
    assert I.resolve_amp("none", torch.device("cpu")) is None and I.resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_bad_tiling_and_batch_are_user_errors():
    with pytest.raises(MsdnError, match="smaller than the tile"):
        deblur(pointwise_model(), random_image(8, 8), tile=32, overlap=32)
    with pytest.raises(MsdnError, match="batch size"):
        deblur(pointwise_model(), random_image(8, 8), batch_size=0)


def test_select_device_cpu_and_auto(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_select_device_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(MsdnError, match="CUDA was requested but is not available"):
        select_device("cuda")
    with pytest.raises(MsdnError, match="MPS .* not available"):
        select_device("mps")
    with pytest.raises(MsdnError, match="unknown device 'tpu'"):
        select_device("tpu")
    with pytest.raises(MsdnError, match="unknown device"):
        select_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(MsdnError, match="cuda:3 was requested but only 1"):
        select_device("cuda:3")
