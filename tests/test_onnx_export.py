"""`msdn weights export --onnx`: ONNX Runtime agrees with torch at any size, the metadata traces the
file back to its weights, and every refusal is one line that leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import TINY, sha256  # noqa: E402
from deblur_cli import files  # noqa: E402
from deblur_cli.cli import app  # noqa: E402
from deblur_cli.weights.configfile import config_from  # noqa: E402
from deblur_cli.nets.deblurgan import DeblurGAN, DeblurGANConfig  # noqa: E402
from deblur_cli.errors import MsdnError  # noqa: E402
from deblur_cli.inference.engine import prepare_model  # noqa: E402
from deblur_cli.weights.onnx_export import DEFAULT_OPSET, INPUT, export_onnx  # noqa: E402
from deblur_cli.weights.weightfile import save_weights  # noqa: E402
from deblur_cli.weights.resolve import load_generator  # noqa: E402

runner = CliRunner()
TINY_GAN = DeblurGANConfig(channels=8, downsamplings=2, blocks=1)


def run_both(weights: Path, onnx_file: Path, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch, ONNX Runtime) outputs for one random input of `shape`."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        ref = prepare_model(load_generator(weights=weights), torch.device("cpu"), channels_last=False)(x)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return ref, torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0])


@pytest.fixture(scope="module")
def gan_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model = DeblurGAN(TINY_GAN)
    torch.nn.init.normal_(model.head[1].weight, std=0.2)  # not the zero-initialised identity
    path = tmp_path_factory.mktemp("gan") / "gan.safetensors"
    save_weights(path, model.state_dict(), TINY_GAN)
    return path


@pytest.mark.parametrize("arch", ["msdn", "deblurgan"])
def test_onnx_runtime_matches_torch_at_several_sizes(arch, weights, gan_weights, tmp_path):
    source = weights if arch == "msdn" else gan_weights
    out = export_onnx(source, tmp_path / "m.onnx")
    multiple = out.size_multiple
    smallest = multiple if arch == "msdn" else 2 * multiple  # DeblurGAN's reflection pads need 2 rows at H/4
    # two multiples of the size multiple (one batched), one that is not, and the smallest sides torch takes
    for shape in [(1, 3, 2 * multiple, 5 * multiple), (2, 3, 6 * multiple, 3 * multiple),
                  (1, 3, 4 * multiple + 3, 3 * multiple - 1), (1, 3, smallest, smallest + 1)]:
        ref, got = run_both(source, out.path, shape)
        assert got.shape == ref.shape == shape
        assert (got - ref).abs().max().item() < 1e-4, shape


def test_metadata_round_trips_to_the_config_and_the_source_file(weights, tmp_path):
    out = export_onnx(weights, tmp_path / "tiny.onnx")
    proto = onnx.load(str(out.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert config_from(meta["msdn_config"], "metadata") == TINY
    assert meta["source_sha256"] == sha256(weights) == out.source_sha256
    assert meta["architecture"] == "msdn" and meta["size_multiple"] == str(TINY.size_multiple) == "8"
    assert meta["source_file"] == weights.name
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {DEFAULT_OPSET} == {out.opset}
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and dims[1] == "" and len(set(dims)) == 4  # batch, H, W dynamic
    assert out.size_bytes == out.path.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".msdn-")]  # no temporary left behind


def test_cli_writes_onnx_and_refuses_to_replace_it(weights, tmp_path):
    target = tmp_path / "tiny.onnx"
    first = runner.invoke(app, ["weights", "export", str(weights), "--onnx", str(target)])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == str(target) and "ONNX opset 17" in first.output
    before = target.read_bytes()
    again = runner.invoke(app, ["weights", "export", str(weights), "--onnx", str(target)])
    assert again.exit_code == 1
    assert again.output.strip() == f"Error: {target} already exists (pass --overwrite to replace)"
    assert target.read_bytes() == before
    replaced = runner.invoke(app, ["weights", "export", str(weights), "--onnx", str(target), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output


def test_cli_with_o_exports_onnx_of_the_written_safetensors(tmp_path):
    from deblur_cli.nets.model import MSDN

    torch.manual_seed(3)
    ckpt = tmp_path / "best.pt"
    torch.save({"generator": MSDN(TINY).state_dict(), "model_config": TINY.to_dict(), "step": 10}, ckpt)
    weights, target = tmp_path / "pub.safetensors", tmp_path / "pub.onnx"
    result = runner.invoke(app, ["weights", "export", str(ckpt), "-o", str(weights), "--onnx", str(target)])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    meta = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert meta["source_sha256"] == entry["sha256"] == sha256(weights)


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, ["weights", "export", *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_errors_are_one_line(weights, tmp_path, monkeypatch):
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    assert one_line_error([str(weights), "--onnx", str(folder)]) == f"Error: {folder} is a directory, not an ONNX file"
    missing = tmp_path / "nope" / "m.onnx"
    assert one_line_error([str(weights), "--onnx", str(missing)]) == \
        f"Error: output folder does not exist: {missing.parent}"
    assert one_line_error([str(weights), "--onnx", str(tmp_path / "m.pb")]) == \
        f"Error: the ONNX file must end in .onnx: {tmp_path / 'm.pb'}"
    assert one_line_error([str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "m.onnx")]) == \
        f"Error: weights file or checkpoint not found: {tmp_path / 'none.pt'}"

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_write_chunk", full)
    target = tmp_path / "m.onnx"
    assert one_line_error([str(weights), "--onnx", str(target)]) == \
        f"Error: cannot write {target}: No space left on device"
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".msdn-")]


def test_without_onnx_installed_the_error_names_the_extra_and_nothing_is_written(weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    out, target = tmp_path / "w.safetensors", tmp_path / "w.onnx"
    line = one_line_error([str(weights), "-o", str(out), "--onnx", str(target)])
    assert line == "Error: ONNX export needs the onnx package: pip install 'msdn-deblur[onnx]'"
    assert list(tmp_path.iterdir()) == []  # -o was not written either
    with pytest.raises(MsdnError, match=r"msdn-deblur\[onnx\]"):
        export_onnx(weights, target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_folder_is_one_line(weights, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert one_line_error([str(weights), "--onnx", str(folder / "m.onnx")]).startswith(
            f"Error: cannot write {folder / 'm.onnx'}: Permission denied")
    finally:
        folder.chmod(0o700)


def test_neither_output_is_a_usage_error(weights):
    result = runner.invoke(app, ["weights", "export", str(weights)])
    assert result.exit_code == 2 and "--onnx" in result.output
