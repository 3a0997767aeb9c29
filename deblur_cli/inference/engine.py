"""Run a generator over a photo of any size in overlapping tiles, with memory bounded by the tile batch.

The image stays on the CPU, as float or as the photo's own integer levels; tiles are gathered (reflect
padding by index arithmetic, see `deblur_cli.inference.tiling`) and made float as they are cut, sent to
the model's device a batch at a time, weighted by separable blend windows and added into a float band
of rows about one tile high. Tiles run row-major, so when a tile row is done the rows above the next
one are final and leave the band through `finish` (for a photo: straight to the file's integer planes).
Peak memory is therefore the input and output images in their own dtype (6 bytes a pixel for 8-bit
RGB), a band that grows with the photo's width, one batch of tiles and the model's activations for it.

Mixed precision: `amp="bf16"|"fp16"` on CUDA; on a CPU bf16 only (oneDNN autocast), which is ~2x
faster than float32 where the CPU has native bf16 (AMX / AVX512-BF16) and ~10x slower where it is
emulated (AVX2 only), so `amp="auto"` picks it only where it is native. fp16 on a CPU is refused.

Runtimes: the network call per batch of tiles is a `Forward` (a CPU float32 batch in, a float32 batch
out), so every runtime shares this one tiling, blending and clamping path. A torch module becomes one
through `torch_forward`; any other object passed to `deblur` provides its own (`Runtime`), which is
how `deblur_cli.inference.openvino_runtime` plugs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, Union

import torch
from torch import Tensor

from deblur_cli.errors import MsdnError
from deblur_cli.imaging.planes import Encoding, bit_depth, new_planes, to_float
from deblur_cli.nets.model import MSDN, fuse_for_inference
from deblur_cli.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, AxisTile, axis_windows, plan_image, source_indices

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", "none", *AMP_DTYPES)  # what --amp accepts, in every command
AMP_MODES = (None, "auto", *AMP_DTYPES)  # what `deblur(amp=...)` accepts: "none" is spelled None
RUNTIME_CHOICES = ("auto", "torch", "openvino")  # what --runtime accepts, in every command


@dataclass(frozen=True)
class Forward:
    """One network call per batch: `run` takes a (B, 3, h, w) float32 CPU tile batch and returns the
    (B, 3, h, w) float32 result on `device` (where the blend weights are kept)."""

    run: Callable[[Tensor], Tensor]
    device: torch.device


class Runtime(Protocol):
    """A network that is not a torch module (OpenVINO): it says its size multiple and gives a Forward."""

    size_multiple: int

    def tile_forward(self, amp: str | None) -> Forward: ...

    def describe(self, amp: str | None) -> str: ...


Network = Union[torch.nn.Module, Runtime]  # what `deblur` runs: a (prepared) torch module or a Runtime


def select_device(name: str = "auto") -> torch.device:
    """Resolve a user's device choice, failing with a clear message when it is not there."""
    choice = name.strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not _mps_available():
            raise MsdnError("MPS (Apple GPU) was requested but is not available on this machine; use --device cpu")
        return torch.device("mps")
    if choice == "cuda" or choice.startswith("cuda:"):
        index = choice.partition(":")[2]
        if index and not index.isdigit():
            raise MsdnError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            raise MsdnError("CUDA was requested but is not available on this machine; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise MsdnError(f"{choice} was requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(choice)
    raise MsdnError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def choose_runtime(runtime: str, device: str | torch.device = "auto") -> tuple[str, torch.device]:
    """The (runtime, device) a run uses: "auto" is OpenVINO where it is installed and the device is a
    CPU, else torch; "openvino" runs on the CPU only ("--device auto" means the CPU then) and needs the
    extra, each refused in one line before any weights are read."""
    from deblur_cli.inference import openvino_runtime

    choice = runtime.strip().lower()
    if choice not in RUNTIME_CHOICES:
        choices = f"{', '.join(RUNTIME_CHOICES[:-1])} or {RUNTIME_CHOICES[-1]}"
        raise MsdnError(f"unknown --runtime {runtime!r}; use {choices}")
    wanted = device if isinstance(device, torch.device) else device.strip().lower()
    if choice == "openvino":
        if str(wanted) not in ("auto", "cpu"):
            raise MsdnError(f"--runtime openvino runs on the CPU only, not {wanted}; use --device cpu, or "
                            "--runtime torch on the GPU")
        openvino_runtime.require_openvino()
        return "openvino", torch.device("cpu")
    target = wanted if isinstance(wanted, torch.device) else select_device(wanted)
    if choice == "auto" and target.type == "cpu" and openvino_runtime.openvino_available():
        return "openvino", target
    return "torch", target


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def prepare_model(model: MSDN, device: torch.device, channels_last: bool | None = None) -> MSDN:
    """Fuse weight norm, switch to eval, freeze and move; channels_last by default on CPU and CUDA,
    where oneDNN / cuDNN run NHWC convolutions faster (CPU: 0.16 s -> 0.08 s per 256px tile)."""
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    model = fuse_for_inference(model).requires_grad_(False).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def torch_forward(model: torch.nn.Module, amp: str | None) -> Forward:
    """The torch call for `deblur`: tiles to the model's device and memory format, under the autocast
    `amp` resolves to (refused here, before any tile runs, when the device cannot do it)."""
    device = next(model.parameters()).device
    amp_context = autocast(resolve_amp(amp, device), device)
    memory_format = torch.channels_last if _is_channels_last(model) else torch.contiguous_format

    def run(tiles: Tensor) -> Tensor:
        tiles = tiles.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with amp_context:
            return model(tiles).float()

    return Forward(run, device)


def forward_for(model: Network, amp: str | None) -> Forward:
    """A torch module runs through `torch_forward`; any other runtime brings its own Forward."""
    return torch_forward(model, amp) if isinstance(model, torch.nn.Module) else model.tile_forward(amp)


def describe_runtime(model: Network, amp: str | None) -> str:
    """How a run is printed once by the CLI: `torch 2.13.0 cpu, 1 thread, fp32`, `openvino 2026.4.1 cpu, ...`."""
    if not isinstance(model, torch.nn.Module):
        return model.describe(amp)
    device = next(model.parameters()).device
    where = f"cpu, {threads_label(torch.get_num_threads())}" if device.type == "cpu" else str(device)
    return f"torch {torch.__version__.split('+')[0]} {where}, {resolve_amp(amp, device) or 'fp32'}"


def threads_label(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


Finish = Callable[[Tensor, int], Tensor]  # (finished float rows, index of the first) -> the output's rows


def deblur(
    model: Network,
    image: Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    amp: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    multiple: int | None = None,
    finish: Finish | None = None,
) -> Tensor:
    """Deblur a (1, 3, H, W) CPU image tile by tile; float in, float32 out; integer in, the same integer out.

    `image` is float in [0, 1], or integer levels (torch.uint8, or torch.uint16 for 16-bit photos)
    whose tiles become float as they are cut, so the photo never exists as a float array. Tiles run
    row by row and are blended into a float band of rows; once a tile row is done the rows above the
    next one are final and leave the band through `finish(rows, first_row)`: (1, 3, h, W) float32
    clamped to [0, 1] in, the output's rows out (any channel count and dtype, e.g.
    `planes.Encoding.rows`). By default that is the rows themselves for a float image, and for an
    integer one levels of its dtype, rounded as `images.save_image` rounds.

    `progress(done_tiles, total_tiles)` is called once before the first batch and after each.
    `multiple`: the model's size requirement, so tiles are cut to sizes it needs no padding for;
    by default the `size_multiple` the model declares (1 for a module that declares none).
    """
    if batch_size < 1:
        raise MsdnError(f"batch size must be at least 1, got {batch_size}")
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) image, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    rows, cols = plan_image(height, width, tile, overlap, _multiple(model, multiple))  # checks tile/overlap once
    image = image.detach().to("cpu", torch.float32) if image.is_floating_point() else image.detach().cpu()
    finish = finish or _default_finish(image.dtype)
    forward = forward_for(model, amp)
    device = forward.device

    row_weights = [w.to(device, torch.float32) for w in axis_windows(rows)]
    col_weights = [w.to(device, torch.float32) for w in axis_windows(cols)]
    grid = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    band = _Band(image.shape[1], width)
    output: Tensor | None = None

    total = len(grid)
    if progress is not None:
        progress(0, total)
    with torch.inference_mode():
        for done, batch in _batches(grid, batch_size):
            tiles = torch.cat([_gather(image, rows[r], cols[c]) for r, c in batch])
            result = forward.run(tiles if tiles.is_floating_point() else to_float(tiles))
            for k, (r, c) in enumerate(batch):
                band.add(result[k], rows[r], cols[c], row_weights[r], col_weights[c])
                if c == len(cols) - 1:  # a tile row is complete: the rows above the next one are final
                    first = band.first
                    finished = finish(band.take(rows[r + 1].keep[0] if r + 1 < len(rows) else height), first)
                    output = _new_output(finished, height) if output is None else output
                    output[:, :, first : first + finished.shape[2]] = finished
            if progress is not None:
                progress(done, total)
    assert output is not None
    return output


def _default_finish(dtype: torch.dtype) -> Finish:
    """Float rows as they are; for integer pixels, the same dtype's levels (a ValueError for others)."""
    if dtype.is_floating_point:
        return lambda rows, first: rows
    return Encoding(bit_depth(dtype)).rows


def _new_output(rows: Tensor, height: int) -> Tensor:
    """The output, made outside inference mode so callers may change it in place (as before)."""
    with torch.inference_mode(False):
        return new_planes(rows, height)


class _Band:
    """The float rows that tiles are still being blended into: image rows [first, first + len).

    Tiles arrive row-major, so a band of about one tile's height, the photo's width, is all that
    is ever float; each pixel's additions happen in the same order as into a whole-image buffer,
    so its sum is bit for bit the one that buffer would hold.
    """

    def __init__(self, channels: int, width: int) -> None:
        self.first = 0
        self.rows = torch.zeros((1, channels, 0, width), dtype=torch.float32)

    def add(self, result: Tensor, row: AxisTile, col: AxisTile, wr: Tensor, wc: Tensor) -> None:
        """Add one tile's (C, th, tw) result, cropped to where its weight is non-zero."""
        (r0, r1), (c0, c1) = row.keep, col.keep
        if r1 > self.first + self.rows.shape[2]:  # a new tile row reaches further down: grow, keeping the sums
            grown = self.rows.new_zeros((*self.rows.shape[:2], r1 - self.first, self.rows.shape[3]))
            grown[:, :, : self.rows.shape[2]] = self.rows
            self.rows = grown
        crop = result[:, r0 - row.start : r1 - row.start, c0 - col.start : c1 - col.start]
        weighted = crop * (wr[:, None] * wc[None, :])
        self.rows[0, :, r0 - self.first : r1 - self.first, c0:c1] += weighted.to(self.rows.device)

    def take(self, stop: int) -> Tensor:
        """Rows [first, stop), which no later tile touches: clamped to [0, 1] and dropped from the band."""
        done = self.rows[:, :, : stop - self.first].clamp_(0.0, 1.0)
        self.rows = self.rows[:, :, stop - self.first :]
        self.first = stop
        return done


def _multiple(model: Network, multiple: int | None) -> int:
    """Tiles sized to the model's multiple need no internal padding (plain test modules declare none)."""
    return int(getattr(model, "size_multiple", 1)) if multiple is None else multiple


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16) rather than emulating it."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """"auto" -> bf16 where it is fast (CUDA with bf16, a CPU with native bf16), else None (float32);
    "none" -> None; anything else as given (checked by `autocast`)."""
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else None
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else None
    return None if amp in (None, "none") else amp


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The mixed-precision context for `amp` (None, "bf16", "fp16"), refusing what the device cannot do."""
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise MsdnError(f"unknown mixed precision {amp!r}; use bf16 or fp16")
    if device.type == "cpu" and amp == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if device.type != "cuda":
        raise MsdnError(f"mixed precision ({amp}) needs a CUDA device; on {device.type} use bf16 or none (float32)")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise MsdnError("this GPU does not support bf16; use fp16")
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[amp])


def _is_channels_last(model: MSDN) -> bool:
    weight = next((p for p in model.parameters() if p.ndim == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _batches(grid: list[tuple[int, int]], size: int) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    for start in range(0, len(grid), size):
        batch = grid[start : start + size]
        yield start + len(batch), batch


def _gather(image: Tensor, row: AxisTile, col: AxisTile) -> Tensor:
    """The (1, C, th, tw) input of one tile; a view when it lies inside the image, else reflected."""
    height, width = image.shape[-2:]
    if 0 <= row.start and row.stop <= height:
        out = image[:, :, row.start : row.stop]
    else:
        out = image.index_select(2, source_indices(row, height))
    if 0 <= col.start and col.stop <= width:
        return out[:, :, :, col.start : col.stop]
    return out.index_select(3, source_indices(col, width))
