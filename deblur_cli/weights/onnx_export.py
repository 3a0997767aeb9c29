"""ONNX export: a generator -> one self-describing `.onnx` file for ONNX Runtime, TensorRT and converters.

The file holds the inference form of the network (weight norm fused, float32, (N, 3, H, W) RGB in
[0, 1] in and out), records its opset in the model's `opset_import`, and carries in `metadata_props`
what rebuilds and traces it: the config JSON (`msdn_config`, as in a safetensors file), the
architecture, the size multiple and the sha256 of the weights it came from.

Why the TorchScript exporter (`dynamo=False`): torch 2.13's default, the dynamo exporter, needs the
`onnxscript` package and explicit `dynamic_shapes` for this forward's size-dependent padding; the
TorchScript exporter ships inside torch and traces the forward as it runs, exactly (ONNX Runtime
matches torch within 1e-5). It is deprecated upstream: when torch drops it, move to `dynamo=True` with
`dynamic_shapes` and add onnxscript to the `onnx` extra.

Why the trace runs on sides that are *not* multiples of the size multiple: the model pads its input
to that multiple and crops the output back, and tracing that path puts the padding into the graph
with H and W as dynamic axes, so the file takes any H and W of at least `size_multiple` (multiples
need no padding; the pad is then zero). onnx and onnxruntime are optional: imported only here, lazily.
"""

from __future__ import annotations

import errno
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes, remove_stale_temps

DEFAULT_OPSET = 17  # ONNX Runtime >= 1.11, TensorRT >= 8.5; 13..20 is what the TorchScript exporter writes
OPSETS = range(13, 21)
INSTALL_HINT = "pip install 'msdn-deblur[onnx]'"
INPUT, OUTPUT = "blurred", "deblurred"
DYNAMIC_AXES = {name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT, OUTPUT)}


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    size_multiple: int
    source_sha256: str
    size_bytes: int


def require_onnx() -> ModuleType:
    """The onnx package, or a one-line error naming the extra that installs it."""
    try:
        import onnx
    except ImportError:
        raise MsdnError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def check_onnx_target(target: Path, overwrite: bool = False) -> None:
    """Refuse a target that cannot or may not be written, before anything is loaded or traced."""
    target = Path(target)
    if target.suffix.lower() != ".onnx":
        raise MsdnError(f"the ONNX file must end in .onnx: {target}")
    if target.is_dir():
        raise MsdnError(f"{target} is a directory, not an ONNX file")
    if not target.parent.is_dir():
        raise MsdnError(f"output folder does not exist: {target.parent}")
    if target.exists() and not overwrite:
        raise MsdnError(f"{target} already exists (pass --overwrite to replace)")


def onnx_metadata(config: Any, source_sha256: str, source_name: str) -> dict[str, str]:
    """What a runtime needs to feed the file, and what traces it back to its weights."""
    from deblur_cli.nets.architectures import arch_of
    from deblur_cli.weights.configfile import CONFIG_KEY

    multiple = config.size_multiple
    return {CONFIG_KEY: config.to_json(), "architecture": arch_of(config), "size_multiple": str(multiple),
            "source_sha256": source_sha256, "source_file": source_name,
            "input": f"{INPUT}: float32 (N, 3, H, W) RGB in [0, 1], sides of {multiple} px or more "
                     f"(padded inside to multiples of {multiple})",
            "output": f"{OUTPUT}: float32, the input's shape, in [0, 1]"}


def trace_size(multiple: int) -> tuple[int, int]:
    """Sides that both need padding (see the module docstring), as small as that allows."""
    return 2 * multiple + 1, 3 * multiple + 1


def graph_bytes(model: Any, multiple: int, opset: int) -> bytes:
    """The traced inference graph, serialised, with dynamic batch, height and width."""
    import torch

    example = torch.rand(1, 3, *trace_size(multiple), generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # the exporter's deprecation and tracer notes: not the user's
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
    return buffer.getvalue()


def generator_onnx(model: Any, config: Any, metadata: dict[str, str], opset: int = DEFAULT_OPSET) -> bytes:
    """A fused, eval-mode generator -> checked ONNX bytes with `metadata` in its metadata_props."""
    onnx = require_onnx()
    proto = onnx.load_from_string(graph_bytes(model, config.size_multiple, opset))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"msdn-deblur {metadata.get('architecture', '')} generator: {metadata.get('input', '')}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx's ValidationError / InferenceError: a bug in the export, said in one line
        raise MsdnError(f"the exported ONNX graph does not pass onnx.checker: {first_line(exc)}") from None
    return proto.SerializeToString()


def _check_written(tmp: Path) -> None:
    """The written file must parse and pass the checker again (every byte reached the disk)."""
    onnx = require_onnx()
    try:
        onnx.checker.check_model(str(tmp))
    except Exception as exc:
        raise OSError(errno.EIO, f"the written ONNX file does not read back ({first_line(exc)})") from None


def export_onnx(source: Path, target: Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False) -> OnnxExport:
    """A weight file or checkpoint -> `target` (.onnx), written atomically; never replaces without `overwrite`."""
    import torch

    from deblur_cli.inference.engine import prepare_model
    from deblur_cli.weights.weightfile import build_generator, load_weights_file, sha256_file

    source, target = Path(source), Path(target)
    require_onnx()
    check_onnx_target(target, overwrite)
    if opset not in OPSETS:
        raise MsdnError(f"opset must be {OPSETS.start}..{OPSETS.stop - 1}, got {opset}")
    if not source.is_file():
        raise MsdnError(f"weights file or checkpoint not found: {source}")
    config, state = load_weights_file(source)
    model = prepare_model(build_generator(config, state), torch.device("cpu"), channels_last=False)
    digest = sha256_file(source)
    data = generator_onnx(model, config, onnx_metadata(config, digest, source.name), opset)
    remove_stale_temps(target.parent)
    atomic_write_bytes(target, data, verify=_check_written, replace=overwrite)
    return OnnxExport(target, opset, config.size_multiple, digest, len(data))
