"""Tiling geometry: coverage, overlap, guard bands, partition of unity, reflect indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deblur_cli.errors import MsdnError
from deblur_cli.inference.tiling import (
    axis_windows,
    border_pad,
    plan_axis,
    raised_cosine,
    reflect_index,
    source_indices,
    validate_tiling,
)


@st.composite
def axis_cases(draw, max_length=3000):
    tile = draw(st.integers(1, 300))
    overlap = draw(st.integers(0, tile - 1))
    length = draw(st.integers(1, max_length))
    return length, tile, overlap


@settings(max_examples=300, deadline=None)
@given(axis_cases())
def test_plan_covers_axis_with_required_overlap_and_guard(case):
    length, tile, overlap = case
    tiles = plan_axis(length, tile, overlap)
    pad = border_pad(overlap) if length >= overlap else 0  # a strip thinner than the overlap: see below
    # Tiles run from the reflect-padded start to the padded end, in order, without gaps.
    assert tiles[0].start == -pad and tiles[-1].stop == length + pad
    if length <= tile:
        assert len(tiles) == 1
    else:
        size = tiles[0].size
        assert all(t.size == size for t in tiles) and size <= tile
        # As few tiles as full-size tiles would need: one fewer could not span the padded axis...
        assert (len(tiles) - 1) * (tile - overlap) + overlap < length + 2 * pad
        # ...and no smaller tile would do with that many.
        assert len(tiles) * (size - 1 - overlap) + overlap < length + 2 * pad
    for left, right in zip(tiles, tiles[1:]):
        assert left.start < right.start
        assert left.stop - right.start >= overlap
    # Non-zero weights (`keep`) tile the image exactly once end to end, never touching a guard band.
    assert tiles[0].keep[0] == 0 and tiles[-1].keep[1] == length
    for left, right in zip(tiles, tiles[1:]):
        assert right.keep[0] <= left.keep[1]  # no uncovered pixel between neighbours
        assert left.stop - left.keep[1] >= overlap // 4
        assert right.keep[0] - right.start >= overlap // 4


@settings(max_examples=200, deadline=None)
@given(axis_cases(max_length=1500))
def test_windows_are_positive_and_sum_to_one_at_every_pixel(case):
    length, tile, overlap = case
    tiles = plan_axis(length, tile, overlap)
    windows = axis_windows(tiles)
    total = np.zeros(length)
    covered = np.zeros(length, dtype=int)
    for t, w in zip(tiles, windows):
        assert w.shape == (t.keep[1] - t.keep[0],)
        assert bool((w > 0).all())
        total[t.keep[0] : t.keep[1]] += w.numpy()
        covered[t.keep[0] : t.keep[1]] += 1
    assert covered.min() >= 1
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_windows_are_flat_in_the_middle_and_ramp_smoothly():
    tiles = plan_axis(1000, 256, 32)
    windows = axis_windows(tiles)
    for t, w in zip(tiles, windows):
        w = w.numpy()
        inner = w[(t.fade_in[1] - t.keep[0]) : (t.fade_out[0] - t.keep[0])]
        np.testing.assert_allclose(inner, 1.0, atol=1e-12)
        # 16-pixel raised-cosine ramp: no step bigger than the cosine's steepest slope allows.
        assert np.abs(np.diff(w)).max() < np.pi / 2 / 16 + 1e-9
    assert tiles[0].fade_out[1] - tiles[0].fade_out[0] == 16


def test_raised_cosine_mirror_pairs_sum_to_one():
    for n in (1, 2, 7, 16):
        ramp = np.array(raised_cosine(n))
        assert (ramp > 0).all() and (ramp < 1).all() and (np.diff(ramp) > 0).all()
        np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 120), st.integers(0, 120))
def test_reflect_index_matches_numpy_reflect_pad_even_beyond_the_image(n, before, after):
    expected = np.pad(np.arange(n), (before, after), mode="reflect")
    got = [reflect_index(i, n) for i in range(-before, n + after)]
    assert got == expected.tolist()


def test_source_indices_of_a_small_image_tile():
    (t,) = plan_axis(8, 256, 8)  # pad 4 on each side
    assert source_indices(t, 8).tolist() == [4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3]
    assert source_indices(t, 8).dtype == torch.long
    (t,) = plan_axis(3, 256, 8, multiple=8)  # thinner than the overlap: padded within the multiple only
    assert source_indices(t, 3).tolist() == [2, 1, 0, 1, 2, 1, 0]


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [(256, 256, "smaller than the tile"), (0, 0, "positive"), (64, -1, "negative"), (16, 40, "smaller")],
)
def test_invalid_tiling_is_a_user_error(tile, overlap, message):
    with pytest.raises(MsdnError, match=message):
        validate_tiling(tile, overlap)
    with pytest.raises(MsdnError):
        plan_axis(100, tile, overlap)


def test_tiles_are_fitted_to_the_model_multiple():
    # 720 rows + 2*16 pad need four tiles either way; 224 (a multiple of 16) suffices instead of 256.
    rows = plan_axis(720, 256, 32, multiple=16)
    assert [t.size for t in rows] == [224] * 4
    assert plan_axis(720, 256, 32)[0].size == 212
    assert plan_axis(100, 256, 32, multiple=16)[0].size == 132  # one tile: the model pads the rest


def test_a_strip_thinner_than_the_overlap_is_padded_only_within_the_model_multiple():
    # A 1-pixel row used to be padded by 16 on both sides: 33 rows computed (48 after the model's
    # own padding) for one kept, which made a 100000x1 strip 3x slower than it needs to be.
    assert [t.size for t in plan_axis(1, 256, 32, multiple=16)] == [15]
    assert [t.size for t in plan_axis(1, 256, 32)] == [1]
    assert [t.size for t in plan_axis(10, 256, 32, multiple=16)] == [10 + 2 * 3]
    assert plan_axis(32, 256, 32, multiple=16)[0].size == 32 + 2 * border_pad(32)  # as thick as the overlap: full pad
