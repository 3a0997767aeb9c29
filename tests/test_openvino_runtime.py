"""`--runtime openvino`: same outputs as torch, the on-disk IR cache (keying, damage), and the runtime choice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY
from deblur_cli import cli
from deblur_cli.inference import ircache
from deblur_cli.inference import openvino_runtime as ov_runtime
from deblur_cli.errors import MsdnError
from deblur_cli.inference.engine import choose_runtime, deblur, prepare_model
from deblur_cli.nets.model import MSDN, MSDNConfig

TILING = {"tile": 64, "overlap": 16}


def tiny_network(seed: int = 0, config: MSDNConfig = TINY) -> MSDN:
    torch.manual_seed(seed)
    model = MSDN(config)
    with torch.no_grad():  # the head starts at zero (the identity); make the body matter
        model.head.weight.normal_(0, 0.3)
    return prepare_model(model, torch.device("cpu"))


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


class Builds:
    """The `build` callable of a runtime, counting how often the torch network had to be built."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network, self.calls = network, 0

    def __call__(self) -> torch.nn.Module:
        self.calls += 1
        return self.network


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def photo(path: Path, h: int = 70, w: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# --- no OpenVINO needed --------------------------------------------------------------------------


def test_export_form_computes_what_the_network_computes_where_a_pool_outgrows_the_bottleneck():
    from deblur_cli.inference.openvino_runtime import export_form

    network = tiny_network(3, MSDNConfig(stem_channels=8, growth_rate=4, encoder_layers=(1, 1), bottleneck_layers=1,
                                         decoder_layers=(1, 1), pyramid_pools=(3, 16)))
    x = image(56, 72)  # bottleneck 7x9: ceil-mode windows cut by the edge, a 16-px pool larger than both sides
    with torch.no_grad():
        torch.testing.assert_close(export_form(network)(x), network(x), atol=1e-6, rtol=0)


def test_cache_entry_round_trip_and_every_kind_of_damage_reads_as_absent(tmp_path: Path):
    key = ircache.EntryKey("ab" * 32, 64, 80, "test")
    folder = ircache.write_entry(tmp_path, key, lambda d: ((d / "model.xml").write_bytes(b"<xml/>"),
                                                           (d / "model.bin").write_bytes(b"\x01" * 100)))
    assert folder.name.startswith("abababababababab-64x80-")
    assert ircache.read_entry(tmp_path, key) == {"model.xml": b"<xml/>", "model.bin": b"\x01" * 100}
    assert ircache.read_entry(tmp_path, ircache.EntryKey("ab" * 32, 64, 80, "another converter")) is None
    assert ircache.has_entries(tmp_path, "ab" * 32) and not ircache.has_entries(tmp_path, "cd" * 32)

    (folder / "model.bin").write_bytes(b"\x01" * 99 + b"\x02")  # same size, other bytes
    assert ircache.read_entry(tmp_path, key) is None
    (folder / "model.bin").write_bytes(b"\x01" * 50)  # truncated
    assert ircache.read_entry(tmp_path, key) is None
    sidecar = json.loads((folder / ircache.SIDECAR).read_text())
    sidecar["files"] = {"../model.bin": sidecar["files"]["model.bin"]}
    (folder / ircache.SIDECAR).write_text(json.dumps(sidecar))
    assert ircache.read_entry(tmp_path, key) is None
    (folder / ircache.SIDECAR).write_text("{not json")
    assert ircache.read_entry(tmp_path, key) is None

    ircache.write_entry(tmp_path, key, lambda d: (d / "model.xml").write_bytes(b"<new/>"))  # replaces the bad one
    assert ircache.read_entry(tmp_path, key) == {"model.xml": b"<new/>"}
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folders left behind

    other_shape = ircache.EntryKey("ab" * 32, 64, 800, "test")
    ircache.write_entry(tmp_path, other_shape, lambda d: (d / "model.xml").write_bytes(b"<wide/>"))
    newer = ircache.EntryKey("ab" * 32, 64, 80, "a newer converter")  # supersedes the stale entry, not the other
    ircache.write_entry(tmp_path, newer, lambda d: (d / "model.xml").write_bytes(b"<newer/>"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([newer.name, other_shape.name])


def test_cache_lives_beside_the_hub_cache_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(ircache.CACHE_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert ircache.cache_root() == tmp_path / "hf" / "msdn-openvino"
    monkeypatch.setenv(ircache.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert ircache.cache_root() == tmp_path / "elsewhere"


def test_without_the_extra_openvino_is_a_one_line_error_and_auto_is_torch(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, weights: Path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    assert choose_runtime("auto", "cpu") == ("torch", torch.device("cpu"))
    code, out, err = run_cli("deblur", photo(tmp_path / "a.png"), "--weights", weights, "--runtime", "openvino")
    assert code == 1 and err.strip() == ("Error: --runtime openvino needs OpenVINO, an optional extra: "
                                         "pip install 'msdn-deblur[openvino]'")
    assert not (tmp_path / "a_deblurred.png").exists()


def test_openvino_refuses_a_gpu_and_unknown_runtimes_in_one_line(tmp_path: Path, weights: Path):
    src = photo(tmp_path / "a.png")
    code, _, err = run_cli("deblur", src, "--weights", weights, "--runtime", "openvino", "--device", "cuda")
    assert code == 1 and err.strip() == ("Error: --runtime openvino runs on the CPU only, not cuda; use --device cpu, "
                                         "or --runtime torch on the GPU")
    code, _, err = run_cli("deblur", src, "--weights", weights, "--runtime", "tensorrt")
    assert code == 1 and err.strip() == "Error: unknown --runtime 'tensorrt'; use auto, torch or openvino"
    assert choose_runtime("auto", torch.device("cuda")) == ("torch", torch.device("cuda"))  # no device probe


# --- with OpenVINO -------------------------------------------------------------------------------

needs_openvino = pytest.mark.skipif(not ov_runtime.openvino_available(), reason="the openvino extra is not installed")


@needs_openvino
def test_auto_picks_openvino_on_a_cpu_and_amp_keeps_its_meaning(monkeypatch: pytest.MonkeyPatch):
    assert choose_runtime("auto", "cpu") == ("openvino", torch.device("cpu"))
    assert choose_runtime("openvino", "auto") == ("openvino", torch.device("cpu"))
    monkeypatch.setattr(ov_runtime, "cpu_has_native_bf16", lambda: False)
    assert ov_runtime.precision_for("auto") == "f32" and ov_runtime.precision_for(None) == "f32"
    assert ov_runtime.precision_for("bf16") == "bf16"
    monkeypatch.setattr(ov_runtime, "cpu_has_native_bf16", lambda: True)
    assert ov_runtime.precision_for("auto") == "bf16"
    with pytest.raises(MsdnError, match=r"mixed precision \(fp16\) needs a CUDA device"):
        ov_runtime.precision_for("fp16")


@needs_openvino
def test_openvino_agrees_with_torch(tmp_path: Path):
    network = tiny_network(1)
    runtime = ov_runtime.OpenVinoNetwork("11" * 32, network.size_multiple, Builds(network), cache_dir=tmp_path)
    photo_ = image(150, 110, seed=2)  # 3 x 2 tiles and a batch of 2 after one of 4: the batch dimension is free
    reference = deblur(network, photo_, **TILING)
    fp32 = deblur(runtime, photo_, **TILING, amp=None)
    assert (fp32 - reference).abs().max() < 1e-4
    bf16 = deblur(runtime, photo_, **TILING, amp="bf16")  # float32 where the CPU has no bf16
    assert (bf16 - reference).abs().max() < 0.02  # the bound torch's own bf16 is held to
    small = image(5, 9, seed=3)  # one tile, padded to the network's multiple by the runtime
    assert (deblur(runtime, small, **TILING) - deblur(network, small, **TILING)).abs().max() < 1e-4


def entries(cache: Path, kind: str = "ir") -> list[Path]:
    """The cache's entries of one kind: "ir" (converted) or "compiled" (any precision, threads and CPU)."""
    def kind_of(entry: Path) -> str:
        return json.loads((entry / ircache.SIDECAR).read_text())["key"]["kind"]

    return [e for e in cache.iterdir() if (kind_of(e) == "ir") == (kind == "ir")]


@needs_openvino
def test_cache_is_keyed_by_weights_and_tile_shape_and_a_warm_start_builds_no_network(tmp_path: Path):
    network, other = tiny_network(1), tiny_network(2)

    def runtime(digest: str, net: torch.nn.Module) -> tuple[ov_runtime.OpenVinoNetwork, Builds]:
        builds = Builds(net)
        return ov_runtime.open_network(digest, net.size_multiple, builds, cache_dir=tmp_path), builds

    first, builds = runtime("11" * 32, network)
    expected = deblur(first, image(100, 100), **TILING, amp=None)
    assert first.conversions == 1 and first.compilations == 1 and builds.calls == 1
    assert len(entries(tmp_path)) == 1 and len(entries(tmp_path, "compiled")) == 1

    warm, builds = runtime("11" * 32, network)  # a second run: imported, never built, converted nor compiled
    torch.testing.assert_close(deblur(warm, image(100, 100), **TILING, amp=None), expected, atol=0, rtol=0)
    assert warm.conversions == 0 and warm.compilations == 0 and builds.calls == 0

    deblur(warm, image(100, 100), tile=48, overlap=16, amp=None)  # another tile size: another entry of each kind
    assert warm.conversions == 1 and builds.calls == 1 and len(entries(tmp_path)) == 2
    deblur(warm, image(100, 100), **TILING, amp="bf16")  # another precision: compiled again, not converted
    assert warm.conversions == 1 and warm.compilations == 2 and len(entries(tmp_path, "compiled")) == 3
    changed, _ = runtime("22" * 32, other)  # other weights: another entry, their own outputs
    assert not torch.equal(deblur(changed, image(100, 100), **TILING, amp=None), expected)
    assert changed.conversions == 1 and len(entries(tmp_path)) == 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """One converted and compiled network (and the output it gives), copied by each damage case."""
    cache = tmp_path_factory.mktemp("pristine")
    network = tiny_network(1)
    runtime = ov_runtime.OpenVinoNetwork("11" * 32, network.size_multiple, Builds(network), cache_dir=cache)
    return cache, deblur(runtime, image(60, 60), **TILING)


@needs_openvino
@pytest.mark.parametrize("kind", ["ir", "compiled"])
@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the sidecar"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path, pristine: tuple[Path, torch.Tensor], damage: str,
                                          kind: str):
    import shutil

    cache, expected = pristine
    shutil.copytree(cache, tmp_path / "cache")
    if kind == "ir":  # a damaged IR is read only when there is no compiled network to import
        shutil.rmtree(entries(tmp_path / "cache", "compiled")[0])
    (entry,) = entries(tmp_path / "cache", kind)
    damaged = entry / ("model.bin" if kind == "ir" else ov_runtime.COMPILED_FILE)
    data = bytearray(damaged.read_bytes())
    if damage == "flip a byte":  # a compiled network with a flipped byte still runs, with other outputs
        data[len(data) // 2] ^= 0x40
        damaged.write_bytes(bytes(data))
    elif damage == "truncate":
        damaged.write_bytes(bytes(data[: len(data) // 2]))
    else:
        (entry / ircache.SIDECAR).unlink()
    network = tiny_network(1)
    again = ov_runtime.OpenVinoNetwork("11" * 32, network.size_multiple, Builds(network), cache_dir=tmp_path / "cache")
    torch.testing.assert_close(deblur(again, image(60, 60), **TILING), expected, atol=0, rtol=0)
    assert (again.conversions, again.compilations) == ((1, 1) if kind == "ir" else (0, 1))  # rebuilt, not trusted
    (entry,) = entries(tmp_path / "cache", kind)  # and stored intact in place of the damaged entry
    key = ircache.EntryKey(**json.loads((entry / ircache.SIDECAR).read_text())["key"])
    assert key.name == entry.name and ircache.read_entry(tmp_path / "cache", key) is not None


@needs_openvino
def test_cli_deblur_and_eval_with_openvino(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MSDN_RUNTIME")  # the CLI's own default: auto
    src = photo(tmp_path / "in" / "shot.png")
    fast = ["--tile", "64", "--overlap", "16", "--device", "cpu", "--amp", "none"]  # float32 on any CPU
    code, out, err = run_cli("deblur", src, "-o", tmp_path / "ov.png", "--weights", weights, *fast)
    assert code == 0 and err == "" and " with openvino " in out, out + err
    code, out, _ = run_cli("deblur", src, "-o", tmp_path / "torch.png", "--weights", weights, *fast,
                           "--runtime", "torch")
    assert code == 0 and " with torch " in out
    ov_pixels, torch_pixels = (np.asarray(Image.open(tmp_path / n)).astype(int) for n in ("ov.png", "torch.png"))
    assert np.abs(ov_pixels - torch_pixels).max() <= 1  # float32 both: at most a rounding step apart
    assert len(entries(tmp_path / "hf" / "msdn-openvino")) == 1

    code, out, err = run_cli("deblur-dir", tmp_path / "in", "-o", tmp_path / "out", "--weights", weights, *fast,
                             "--runtime", "openvino")
    assert code == 0 and "with openvino" in " ".join(err.split()) and (tmp_path / "out" / "shot.png").is_file()

    pairs = tmp_path / "pairs"
    photo(pairs / "blur" / "a.png")
    photo(pairs / "sharp" / "a.png")
    code, out, err = run_cli("eval", pairs, "--weights", weights, "--tile", "64", "--overlap", "16",
                             "--runtime", "openvino")
    assert code == 0 and "runtime openvino" in err, out + err
