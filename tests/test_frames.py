"""The frame-averaging renderer (deblur_cli.training.frames): geometry, reference frame, averaging and mixing."""

from __future__ import annotations

import pytest
import torch
from skimage import data as skdata

from deblur_cli.training import frames
from deblur_cli.training import shake
from deblur_cli.training import synthetic as S
from deblur_cli.errors import MsdnError
from deblur_cli.training.trainconfig import TrainConfig

from conftest import gen
from conftest import photo_crop as photo

NO_EFFECTS = shake.Realism(noise=0.0, shot_noise=0.0, highlights=0.0, jpeg=0.0)


@pytest.mark.parametrize(("length", "count"), [(0.0, 9), (30.0, 17), (60.0, 31), (500.0, 41)])
def test_frame_count_is_odd_and_dense_enough(length: float, count: int) -> None:
    assert frames.frame_count(length) == count and count % 2 == 1


def test_warp_convention_matches_an_integer_shift() -> None:
    image = photo(40)
    shift = frames.homographies(torch.tensor([[3.0, -2.0, 0.0, 0.0, 0.0, 0.0]]))
    out = frames._warp(image, shift, margin=5)
    # output pixel (y, x) reads source (y - 2, x + 3): the homography maps output to source offsets
    torch.testing.assert_close(out, image[..., 3:33, 8:38], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", frames.FAMILIES)
@pytest.mark.parametrize("target", frames.TARGETS)
def test_motion_has_the_asked_length_and_its_reference_at_the_identity(family: str, target: str) -> None:
    lengths = torch.tensor([4.0, 20.0, 60.0])
    params = frames.motion(family, 3, 21, lengths, 64.0, target, gen(2))
    assert params.shape == (3, 21, 6)
    reference = params[:, 10] if target == "middle" else params.mean(dim=1)
    assert reference.abs().max() < 1e-5
    r = 64.0 / 2**0.5
    probes = torch.tensor([[0.0, 0.0], [r, r], [-r, r], [r, -r], [-r, -r]])
    track = frames._apply(frames.homographies(params), probes)
    arc = (track[:, 1:] - track[:, :-1]).norm(dim=-1).sum(dim=1).amax(dim=-1)
    torch.testing.assert_close(arc, lengths, rtol=0.03, atol=0.05)  # rescaling is linear to first order


def test_zero_motion_renders_the_target_itself() -> None:
    scene = shake.srgb_to_linear(photo(48, n=2))
    for layers, gamma in ((0.0, 0.0), (1.0, 1.0)):
        blurred, target = frames.render(scene, ("glide",), torch.zeros(2), 4, gen(4), layers, gamma)
        torch.testing.assert_close(blurred, target, atol=1e-5, rtol=0)
    plain = frames.render(scene, ("glide",), torch.zeros(2), 4, gen(4), 0.0, 0.0)[1]
    assert torch.equal(plain, scene[..., 4:-4, 4:-4])  # no second layer: the crop itself


def test_blur_grows_with_length_and_is_reproducible() -> None:
    sharp = photo(160, n=4)
    errors = []
    for lengths in ((3.0, 3.0), (12.0, 12.0), (40.0, 40.0)):
        m = shake.margin_for(lengths[1])
        crop = sharp[..., :160, :160]
        blurred, target = frames.blur(crop, frames.TRAIN_FAMILIES, lengths, gen(5), NO_EFFECTS, 0.0)
        assert blurred.shape == target.shape == (4, 3, 160 - 2 * m, 160 - 2 * m)
        errors.append(float((blurred - target).pow(2).mean()))
    assert errors[0] < errors[1] < errors[2]
    a = frames.blur(sharp, frames.FAMILIES, (2.0, 30.0), gen(6))[0]
    b = frames.blur(sharp, frames.FAMILIES, (2.0, 30.0), gen(6))[0]
    c = frames.blur(sharp, frames.FAMILIES, (2.0, 30.0), gen(7))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gamma_averaging_darkens_a_mixed_edge_as_in_srgb() -> None:
    """Half black, half white, smeared across: averaging encoded values gives a darker mid-tone
    (GOPRO's plain `blur` folders) than averaging light (0.5 linear = 0.735 sRGB)."""
    edge = torch.zeros(1, 3, 64, 64)
    edge[..., 32:] = 1.0
    edge = edge.transpose(-1, -2).contiguous()  # a vertical edge, columns 32.. white
    linear, _ = frames.blur(edge, ("glide",), (20.0, 20.0), gen(8), NO_EFFECTS, 0.0, gamma=0.0)
    encoded, _ = frames.blur(edge, ("glide",), (20.0, 20.0), gen(8), NO_EFFECTS, 0.0, gamma=1.0)
    mixed = (linear > 0.05) & (linear < 0.95)
    assert mixed.any() and float(linear[mixed].mean()) > float(encoded[mixed].mean()) + 0.05


def test_a_second_layer_moves_on_its_own() -> None:
    sharp = photo(96, n=2)
    one, target_one = frames.blur(sharp, ("jitter",), (15.0, 15.0), gen(9), NO_EFFECTS, layers=0.0)
    two, target_two = frames.blur(sharp, ("jitter",), (15.0, 15.0), gen(9), NO_EFFECTS, layers=1.0)
    assert not torch.equal(target_one, target_two)  # the reference frame is the composite
    assert (one - two).abs().mean() > 0.01


def astronaut_bank(folder) -> S.PhotoBank:
    """A one-photo bank for the training-batch tests."""
    from PIL import Image

    from deblur_cli.training.data import Sample

    path = folder / "a.png"
    Image.fromarray(skdata.astronaut()[:220, :220]).save(path)
    return S.PhotoBank([Sample(sharp=path)])


def test_training_batches_mix_the_renderers_and_share_zero_is_unchanged(tmp_path) -> None:
    from deblur_cli.training.data import mix_seed

    bank = astronaut_bank(tmp_path)
    args = (bank, 4, 32, shake.TRAIN_FAMILIES, (2.0, 12.0), shake.Realism(), 3, 11)
    plain = S.training_pair(*args)
    generator = torch.Generator().manual_seed(mix_seed(3, 0xB4, 11))
    big = bank.batch(4, 32 + 2 * shake.margin_for(12.0), generator)
    expected = shake.blur(big, shake.TRAIN_FAMILIES, (2.0, 12.0), generator, shake.Realism())
    assert torch.equal(plain[0], expected[0])  # no share: exactly the batches of earlier runs
    assert torch.equal(S.training_pair(*args, mix=frames.FrameMix(share=0.0))[0], plain[0])
    clean = (bank, 4, 32, shake.TRAIN_FAMILIES, (2.0, 12.0), NO_EFFECTS, 3, 11)
    mixed = S.training_pair(*clean, mix=frames.FrameMix(share=0.5, layers=0.0))
    unmixed = S.training_pair(*clean)
    assert mixed[0].shape == unmixed[0].shape == (4, 3, 32, 32)
    torch.testing.assert_close(mixed[1], unmixed[1], atol=1e-5, rtol=0)  # the same crops, unblurred targets
    assert (mixed[0][2:] - unmixed[0][2:]).abs().mean() > 0.005  # the last half rendered by averaging frames


def test_still_share_leaves_inputs_of_both_renderers_sharp(tmp_path) -> None:
    args = (astronaut_bank(tmp_path), 4, 32, shake.TRAIN_FAMILIES, (2.0, 12.0), NO_EFFECTS, 3, 11)
    blurred, sharp = S.training_pair(*args, mix=frames.FrameMix(share=0.5, layers=0.0), still=1.0)
    torch.testing.assert_close(blurred, sharp, atol=1e-4, rtol=0)
    config = TrainConfig(still_share=0.1)
    assert TrainConfig.from_json(config.to_json()).still_share == 0.1
    with pytest.raises(MsdnError, match=r"^still-share must be in \[0, 1\], got 1.5$"):
        TrainConfig(still_share=1.5)


def test_train_config_checks_and_round_trips_the_frame_options() -> None:
    config = TrainConfig(frame_share=0.5, frame_families=("glide",), frame_target="mean")
    assert TrainConfig.from_json(config.to_json()) == config
    assert config.frame_mix == frames.FrameMix(0.5, ("glide",), 0.3, 0.5, "mean")
    with pytest.raises(MsdnError, match=r"^frame-share must be in \[0, 1\], got 1.5$"):
        TrainConfig(frame_share=1.5)
    with pytest.raises(MsdnError, match="^unknown frame families orbit; use glide, jitter, bob$"):
        TrainConfig(frame_families=("orbit",))
    with pytest.raises(MsdnError, match="^unknown frame target 'first'; use middle, mean$"):
        TrainConfig(frame_target="first")
