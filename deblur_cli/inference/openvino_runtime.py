"""`--runtime openvino`: the generator's per-batch call run by OpenVINO on the CPU, everything else shared.

Why: on a CPU OpenVINO runs the same network from one compiled graph with its own kernels, without
torch's per-op dispatch. It is only the network call (`inference.Forward`): tiling, blending, clamping,
colour handling and every output guarantee stay the one torch-based path in `inference.deblur`.

How: the fused torch network is traced at one tile shape (`torch.jit.trace`, then
`openvino.convert_model`; the batch dimension stays dynamic) and the result cached on disk
(`ircache`), keyed by the weights' sha256, the tile shape, OpenVINO's version and `EXPORT_REVISION`.
Precision is not part of that key: the IR keeps float32 weights and bf16 is a compile-time hint
(`INFERENCE_PRECISION_HINT`), so one conversion serves both. The compiled network is cached too, keyed
as well by precision, thread count and CPU: a warm run imports it (about a quarter of a compile) and
never builds the torch network (which costs about a second on a fresh process), so a cold conversion
builds it lazily, once.

Torch is still imported: photos are decoded into torch tensors (`images.py`) and tiles are cut and
blended with torch ops; a torch-free path would be a second tiling and image implementation.

OpenVINO is an optional extra, imported only inside these functions; `openvino_available` asks for it
without importing it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deblur_cli.inference import ircache
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.inference.engine import Forward, autocast, threads_label
from deblur_cli.nets.model import PyramidPooling, pad_to_multiple

INSTALL_HINT = "pip install 'msdn-deblur[openvino]'"
KEEP_COMPILED = 4  # tile shapes kept compiled at once: a folder of many photo sizes must not grow without end
COMPILED_FILE = "compiled.blob"  # a compiled network's entry: OpenVINO's export of it
EXPORT_REVISION = 1  # bump when what is traced changes (`export_form`), so old cache entries are not used
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16"}  # OpenVINO's names -> the ones --amp prints


def openvino_available() -> bool:
    """Whether the extra is installed (found, not imported: auto must not pay for the import)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def require_openvino() -> None:
    if not openvino_available():
        raise MsdnError(f"--runtime openvino needs OpenVINO, an optional extra: {INSTALL_HINT}")


@functools.cache
def _core() -> Any:
    """One OpenVINO Core per process (it owns the CPU plugin and its thread pools)."""
    import openvino

    return openvino.Core()


def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def _producer() -> str:
    return f"openvino-{openvino_version()}+{EXPORT_REVISION}"


@functools.cache
def _cpu_tag() -> str:
    """A short digest of the CPU as OpenVINO sees it: a compiled network holds kernels for one instruction
    set, so a cache shared between machines keeps one per CPU."""
    core = _core()
    seen = f"{core.get_property('CPU', 'FULL_DEVICE_NAME')}|{core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}"
    return hashlib.sha256(seen.encode()).hexdigest()[:8]


def cpu_has_native_bf16() -> bool:
    """What OpenVINO's CPU plugin says it computes natively (AMX / AVX512-BF16 CPUs list BF16)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precision_for(amp: str | None) -> str:
    """--amp as OpenVINO's precision hint, by the same rules as torch on a CPU: auto = bf16 only where it
    is native; bf16 as asked (OpenVINO runs float32 where the CPU has no bf16); fp16 refused."""
    if amp is None:
        return "f32"
    if amp == "auto":
        return "bf16" if cpu_has_native_bf16() else "f32"
    autocast(amp, torch.device("cpu"))  # torch's own refusals on a CPU (fp16, unknown names), one place
    return "bf16"


# --- conversion ----------------------------------------------------------------------------------


def _pooled_like_torch(x: Tensor, kernel: int) -> Tensor:
    """`avg_pool2d(x, kernel, ceil_mode=True)` written without ceil mode: OpenVINO's pooling refuses a
    kernel larger than the data (a 16-px pool on a 14-px bottleneck), which torch allows. Zero-pad to
    whole windows, sum-pool, divide by the in-image count of each window: torch's exact arithmetic."""
    ph, pw = -x.shape[-2] % kernel, -x.shape[-1] % kernel
    total = F.avg_pool2d(F.pad(x, (0, pw, 0, ph)), kernel)
    inside = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), (0, pw, 0, ph)), kernel)
    return total / inside


def _pyramid_forward(self: PyramidPooling, x: Tensor) -> Tensor:
    """PyramidPooling.forward with `_pooled_like_torch` in place of the ceil-mode pooling."""
    size = x.shape[-2:]
    outs = [x]
    for kernel, branch in zip(self.pools, self.branches):
        outs.append(F.interpolate(branch(_pooled_like_torch(x, kernel)), size=size, mode="bilinear",
                                  align_corners=False))
    return torch.cat(outs, dim=1)


def export_form(network: nn.Module) -> nn.Module:
    """A copy of the fused network that OpenVINO can convert at any tile shape, computing the same."""
    network = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    for module in network.modules():
        if isinstance(module, PyramidPooling):
            module.forward = types.MethodType(_pyramid_forward, module)  # type: ignore[method-assign]
    return network


def convert(network: nn.Module, height: int, width: int) -> Any:
    """The network as an OpenVINO model for (any batch, 3, height, width) inputs (sides already padded to
    its multiple, so the traced graph holds no padding branch)."""
    import openvino

    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
        traced = torch.jit.trace(export_form(network), example, check_trace=False)
        return openvino.convert_model(traced, input=[(-1, 3, height, width)])


# --- the runtime ---------------------------------------------------------------------------------


class OpenVinoNetwork:
    """A generator run by OpenVINO, compiled per (tile shape, precision) on first use (`inference.Runtime`).

    `build()` returns the fused torch network; it is called only when a tile shape is not in the cache.
    `setup_seconds` adds up the time spent converting and compiling, so callers can time inference alone.
    """

    def __init__(self, weights_sha256: str, size_multiple: int, build: Callable[[], nn.Module], *,
                 threads: int | None = None, cache_dir: Path | None = None) -> None:
        require_openvino()
        self.weights_sha256 = weights_sha256
        self.size_multiple = size_multiple
        self.threads = threads or torch.get_num_threads()
        self.cache_dir = cache_dir if cache_dir is not None else ircache.cache_root()
        self.setup_seconds = 0.0
        self.conversions = 0  # tile shapes converted by this process (not found in the cache)
        self.compilations = 0  # networks compiled by this process (their compiled form not in the cache)
        self._build = build
        self._network: nn.Module | None = None
        self._requests: dict[tuple[int, int, str], Any] = {}

    def network(self) -> nn.Module:
        """The torch network, built once, on the first conversion that needs it."""
        if self._network is None:
            self._network = self._build()
        return self._network

    def describe(self, amp: str | None) -> str:
        precision = precision_for(amp)
        ran = precision if precision == "f32" or cpu_has_native_bf16() else "f32"
        note = "" if ran == precision else " (bf16 asked; this CPU has no native bf16)"
        return f"openvino {openvino_version()} cpu, {threads_label(self.threads)}, {PRECISION_NAMES[ran]}{note}"

    def tile_forward(self, amp: str | None) -> Forward:
        precision = precision_for(amp)  # a bad --amp is refused before any tile runs
        multiple = self.size_multiple

        def run(tiles: Tensor) -> Tensor:
            height, width = tiles.shape[-2:]
            padded = pad_to_multiple(tiles.to(torch.float32), multiple).contiguous()
            request = self._request(padded.shape[-2], padded.shape[-1], precision)
            result = request.infer({0: padded.numpy()}, share_inputs=True)[0]
            return torch.from_numpy(result)[..., :height, :width]

        return Forward(run, torch.device("cpu"))

    def _request(self, height: int, width: int, precision: str) -> Any:
        """The compiled network for a tile shape and precision (the few most recent stay compiled)."""
        key = (height, width, precision)
        if key in self._requests:
            self._requests[key] = self._requests.pop(key)  # most recently used last
            return self._requests[key]
        start = time.perf_counter()
        try:
            compiled = self._compiled(height, width, precision)
        except MsdnError:
            raise
        except Exception as exc:  # OpenVINO's conversion and compile errors have no common base class
            raise MsdnError(f"OpenVINO could not run this network on {height}x{width} tiles "
                            f"({first_line(exc)}); use --runtime torch") from None
        self._requests[key] = compiled.create_infer_request()
        while len(self._requests) > KEEP_COMPILED:
            del self._requests[next(iter(self._requests))]
        self.setup_seconds += time.perf_counter() - start
        return self._requests[key]

    def _compiled(self, height: int, width: int, precision: str) -> Any:
        """The network compiled for this tile shape, precision and thread count: imported from the cache
        when intact, else compiled from the IR and stored."""
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        key = ircache.EntryKey(self.weights_sha256, height, width, _producer(),
                               kind=f"{precision}-t{self.threads}-{_cpu_tag()}")
        files = ircache.read_entry(self.cache_dir, key)
        if files is not None and COMPILED_FILE in files:
            try:
                return _core().import_model(files[COMPILED_FILE], "CPU", config)
            except Exception:  # noqa: BLE001 (intact bytes this OpenVINO or CPU cannot import: compiled again)
                pass
        compiled = _core().compile_model(self._ir(height, width), "CPU", config)
        self.compilations += 1
        try:
            ircache.write_entry(self.cache_dir, key, lambda folder: (folder / COMPILED_FILE).write_bytes(
                compiled.export_model().getvalue()))
        except OSError:
            pass  # as for the IR: an unwritable cache costs the next run a compile, never this run its result
        return compiled

    def _ir(self, height: int, width: int) -> Any:
        """The converted network for this tile shape: from the cache when intact, else converted and stored."""
        import openvino

        key = ircache.EntryKey(self.weights_sha256, height, width, _producer())
        files = ircache.read_entry(self.cache_dir, key)
        if files is not None and {"model.xml", "model.bin"} <= files.keys():
            try:
                return _core().read_model(files["model.xml"], files["model.bin"])
            except Exception:  # noqa: BLE001 (OpenVINO's read errors have no common base class)
                pass  # intact bytes this OpenVINO cannot read: converted again below, replacing them
        model = convert(self.network(), height, width)
        self.conversions += 1
        try:
            ircache.write_entry(self.cache_dir, key, lambda folder: openvino.save_model(
                model, folder / "model.xml", compress_to_fp16=False))
        except OSError:
            pass  # an unwritable cache costs the next run a conversion, never this run its result
        return model


def open_network(weights_sha256: str, size_multiple: int, build: Callable[[], nn.Module], *,
                 threads: int | None = None, cache_dir: Path | None = None) -> OpenVinoNetwork:
    """An OpenVINO runtime for a weights file. Weights never converted here are built at once, so a file
    that does not load fails now with its own message rather than later on each photo."""
    network = OpenVinoNetwork(weights_sha256, size_multiple, build, threads=threads, cache_dir=cache_dir)
    if not ircache.has_entries(network.cache_dir, weights_sha256):
        network.network()
    return network
