"""Weights: manifest validation, Hub resolution against a local fake Hub, verification, export/push.

No network: `hub_server.FakeHub` answers huggingface_hub's resolve/upload requests on 127.0.0.1 and
every test points HF_ENDPOINT / HF_HOME / HF_HUB_CACHE at it and at a temporary cache.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import FakeHub  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from deblur_cli.weights import checkpoint as ck  # noqa: E402
from deblur_cli.weights import hub as hb  # noqa: E402
from deblur_cli.weights import manifest as mf  # noqa: E402
from deblur_cli.weights import publish as pub  # noqa: E402
from deblur_cli.weights import weightfile as wf  # noqa: E402
from deblur_cli.weights import resolve as w  # noqa: E402
from deblur_cli.cli import app  # noqa: E402
from deblur_cli.errors import MsdnError  # noqa: E402
from deblur_cli.nets.model import MSDN, MSDNConfig  # noqa: E402
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny_model(seed: int = 0, config: MSDNConfig = TINY) -> MSDN:
    """A random tiny generator whose output differs from its input (the real head starts at zero)."""
    torch.manual_seed(seed)
    model = MSDN(config)
    torch.nn.init.normal_(model.head.weight, std=0.2)
    return model.eval()


def outputs(model: MSDN) -> torch.Tensor:
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model.eval()(x)


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def hf_cache(monkeypatch, tmp_path) -> Path:
    """A private HF cache, online, no token anywhere."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home / "hub"


@pytest.fixture
def online(monkeypatch, hub, hf_cache) -> FakeHub:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


@pytest.fixture
def manifest(monkeypatch, tmp_path):
    """Write a temporary manifest (and bundled dir) and point the package at them."""
    bundled_dir = tmp_path / "bundled"
    bundled_dir.mkdir()
    monkeypatch.setattr(w, "BUNDLED_DIR", bundled_dir)

    def write(entries: list[dict], default: str | None = None) -> Path:
        path = tmp_path / "weights_manifest.json"
        path.write_text(json.dumps({"schema_version": 1, "default": default, "models": entries}))
        monkeypatch.setattr(mf, "MANIFEST_PATH", path)
        return path

    write.bundled_dir = bundled_dir  # type: ignore[attr-defined]
    return write


def publish(hub: FakeHub, tmp_path: Path, name: str = "tiny", seed: int = 0) -> tuple[dict, MSDN]:
    """Export a tiny model, put it on the fake Hub, and return its manifest entry."""
    model = tiny_model(seed)
    path = tmp_path / f"{name}.safetensors"
    wf.save_weights(path, model.state_dict(), TINY)
    repo_id = f"tester/{tmp_path.name[-30:]}-{name}"
    commit = hub.add_file(repo_id, path.name, path.read_bytes())
    entry = pub.entry_template(name, TINY, path, {"psnr": 27.5}, repo_id=repo_id, revision=commit)
    path.unlink()  # only the Hub has it now
    return entry, model


def valid_entry() -> dict:
    return {"name": "gopro", "description": "d", "repo_id": "owner/repo", "revision": "a" * 40,
            "filename": "g.safetensors", "format": "safetensors", "sha256": "b" * 64, "size_bytes": 10,
            "config": TINY.to_dict(), "tile": 256, "overlap": 32, "license": "mit", "training_data": "GoPro",
            "metrics": {"psnr": 28.1}}


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------


def test_shipped_default_model_is_bundled_pinned_and_loads_offline(monkeypatch):
    """A fresh clone deblurs with no --weights and no network: the default model is a file inside the
    package whose sha256 and size the manifest pins, with its measured gain in every eval group."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shipped = mf.load_manifest()
    entry = shipped.entry()
    assert shipped.default == entry.name == "msdn-photos"
    bundled = ROOT / "deblur_cli" / "weights" / entry.filename
    assert bundled.stat().st_size == entry.size_bytes < 25 * 10**6 and wf.sha256_file(bundled) == entry.sha256
    gains = {k: v for k, v in entry.metrics.items() if k.endswith("_overall_gain_db_aligned")}
    blurred = {f"{g}_overall_gain_db_aligned" for g in ("train", "heldout", "frames_heldout", "real")}
    assert set(gains) == blurred | {"still_overall_gain_db_aligned"}  # still: recorded, not gated
    assert all(gains[k] > 0 for k in blurred)  # the shipping rule of scripts/manifest_entry.py
    model = w.load_generator()
    assert model.config == entry.config and any(p.abs().sum() > 0 for p in model.head.parameters())  # trained
    assert (ROOT / "docs" / "MODEL_CARD.md").read_text().count(f"{gains['real_overall_gain_db_aligned']:+.2f}") >= 1
    root = ROOT / "weights_manifest.json"
    assert root.is_symlink() and not os.path.isabs(os.readlink(root))
    assert root.resolve() == (ROOT / "deblur_cli" / "weights_manifest.json").resolve()


def test_valid_manifest_round_trips():
    m = mf.parse_manifest({"schema_version": 1, "default": "gopro", "models": [valid_entry()]})
    assert m.entry().name == "gopro" and m.entry().config == TINY
    assert m.entry("gopro").to_dict() == valid_entry()


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(revision="main"), "models[0] ('gopro').revision must be a full 40-character"),
    (lambda e: e.update(revision="A" * 40), "revision must be a full 40-character lowercase"),
    (lambda e: e.update(sha256="abc"), "sha256 must be 64 lowercase hex digits"),
    (lambda e: e.update(format="pt"), "format must be 'safetensors'"),
    (lambda e: e.update(size_bytes="10"), "size_bytes must be an integer"),
    (lambda e: e.update(size_bytes=0), "size_bytes must be positive"),
    (lambda e: e.pop("license"), "missing the field 'license'"),
    (lambda e: e.update(licence="mit"), "unknown field 'licence'"),
    (lambda e: e["config"].update(growth=4), "config does not build a generator config: unknown MSDN config keys: growth"),
    (lambda e: e.update(tile=100), "tile must be a positive multiple of 8"),
    (lambda e: e.update(overlap=128), "overlap must be at least 0 and less than half the tile"),
    (lambda e: e.update(repo_id="just-a-name"), "repo_id must look like 'owner/name'"),
    (lambda e: e.update(filename="../x.safetensors"), "filename must be a relative path ending in .safetensors"),
    (lambda e: e.update(metrics={"psnr": "high"}), "metrics.psnr must be a number"),
    (lambda e: e.update(bundled="sub/x.safetensors"), "bundled must be a plain .safetensors file name"),
    (lambda e: e.pop("revision"), "needs a Hub repo_id and revision, or a bundled file"),
    (lambda e: (e.pop("revision"), e.update(bundled="x.safetensors")), "needs both repo_id and revision, or neither"),
])
def test_malformed_entry_names_the_field(change, message):
    entry = valid_entry()
    change(entry)
    with pytest.raises(MsdnError) as info:
        mf.parse_manifest({"schema_version": 1, "default": None, "models": [entry]}, "m.json")
    text = str(info.value)
    assert text.startswith("m.json is malformed: ") and message in text and "\n" not in text


@pytest.mark.parametrize("data, message", [
    ({"schema_version": 1, "default": "nope", "models": [valid_entry()]}, "default 'nope' names no entry"),
    ({"schema_version": 2, "default": None, "models": []}, "schema_version 2 is not supported"),
    ({"default": None, "models": []}, "missing the field 'schema_version'"),
    ({"schema_version": 1, "default": None, "models": {}}, "models must be a list"),
    ({"schema_version": 1, "default": None, "models": [valid_entry(), valid_entry()]},
     "model name 'gopro' appears more than once"),
    ([], "the manifest must be an object"),
])
def test_malformed_manifest_names_the_field(data, message):
    with pytest.raises(MsdnError, match="malformed") as info:
        mf.parse_manifest(data)
    assert message in str(info.value)


def test_manifest_file_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text('{"schema_version": 1,\n "default": nul}')
    with pytest.raises(MsdnError, match=r"m.json is not valid JSON \(line 2, column 13"):
        mf.load_manifest(bad)
    with pytest.raises(MsdnError, match="cannot read the weights manifest"):
        mf.load_manifest(tmp_path / "missing.json")


def test_unknown_model_lists_the_known_ones(manifest):
    manifest([valid_entry(), {**valid_entry(), "name": "realblur"}], default="gopro")
    with pytest.raises(MsdnError, match=r"unknown model 'gorpo' \(known models: gopro, realblur\)"):
        w.load_generator(model="gorpo")


def test_a_manifest_without_a_default_names_the_ways_forward(manifest):
    manifest([valid_entry()], default=None)
    with pytest.raises(MsdnError) as info:
        w.load_generator()
    assert str(info.value) == (
        "the weights manifest names no default model: pick one with --model NAME (`msdn weights list` shows them) "
        "or pass --weights PATH to a generator file (train one with `msdn train`, export it with "
        "`msdn weights export`)")


# ---------------------------------------------------------------------------------------------
# weight files given by path
# ---------------------------------------------------------------------------------------------


def test_training_checkpoint_pt_loads_with_weights_only(tmp_path):
    model = tiny_model(1)
    ckpt = tmp_path / "last.pt"
    torch.save({"generator": model.state_dict(), "model_config": TINY.to_dict(), "step": 10,
                "best_val_psnr": 25.0, "optimizer": {"lr": torch.tensor(1e-4)}}, ckpt)
    loaded = w.load_generator(weights=ckpt)
    assert torch.equal(outputs(loaded), outputs(model))
    assert ck.load_checkpoint(ckpt).metrics == {"best_val_psnr": 25.0}


class NotAStateDict:  # pickled by reference: only a full unpickler would rebuild it
    pass


def test_pickled_code_is_refused(tmp_path):
    ckpt = tmp_path / "evil.pt"
    torch.save({"generator": NotAStateDict(), "model_config": TINY.to_dict()}, ckpt)
    with pytest.raises(MsdnError, match="is not a loadable PyTorch checkpoint"):
        w.load_generator(weights=ckpt)
    ckpt.write_bytes(b"")  # truncated to nothing
    with pytest.raises(MsdnError, match=r"is empty \(0 bytes\), not a PyTorch checkpoint"):
        w.load_generator(weights=ckpt)


class RunsCode:
    def __reduce__(self):
        return (os.remove, (self.victim,))


def test_a_protocol_4_pickle_that_runs_code_is_refused_without_a_warning(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    payload = RunsCode()
    payload.victim = str(victim)
    ckpt = tmp_path / "evil.pth"
    ckpt.write_bytes(pickle.dumps({"state_dict": payload}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol 4" UserWarning printed before the error
        with pytest.raises(MsdnError, match="files that run code on load are refused"):
            w.load_generator(weights=ckpt)
    assert victim.read_text() == "mine"


def test_bare_state_dict_pt_needs_sibling_config(tmp_path):
    model = tiny_model(2)
    ckpt = tmp_path / "g.pth"
    torch.save(model.state_dict(), ckpt)
    with pytest.raises(MsdnError, match="no config.json beside it"):
        w.load_generator(weights=ckpt)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    assert torch.equal(outputs(w.load_generator(weights=ckpt)), outputs(model))


def test_safetensors_config_from_sibling_config_json(tmp_path):
    model = tiny_model(3)
    path = tmp_path / "g.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # no metadata
    with pytest.raises(MsdnError, match="carries no model config"):
        w.load_generator(weights=path)
    (tmp_path / "config.json").write_text(json.dumps({"msdn_config": TINY.to_dict()}))
    assert torch.equal(outputs(w.load_generator(weights=path)), outputs(model))


def test_shape_mismatch_names_the_key(tmp_path):
    wider = MSDNConfig(**{**TINY.to_dict(), "growth_rate": 6, "encoder_layers": (1, 1), "decoder_layers": (1, 1),
                          "pyramid_pools": (2, 4)})
    theirs, ours = MSDN(wider).state_dict(), MSDN(TINY).state_dict()
    first_bad = next(k for k in theirs if k in ours and theirs[k].shape != ours[k].shape)
    path = tmp_path / "g.safetensors"
    wf.save_weights(path, theirs, TINY)  # claims the tiny config, holds wider tensors
    with pytest.raises(MsdnError, match=re.escape(f"'{first_bad}' has shape {tuple(theirs[first_bad].shape)}, "
                                                  f"the config expects {tuple(ours[first_bad].shape)}")):
        w.load_generator(weights=path)


def test_missing_key_is_named(tmp_path):
    state = tiny_model().state_dict()
    dropped = sorted(state)[0]
    del state[dropped]
    path = tmp_path / "g.safetensors"
    wf.save_weights(path, state, TINY)
    with pytest.raises(MsdnError, match=f"missing key '{dropped}'"):
        w.load_generator(weights=path)


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(MsdnError, match="weights file not found"):
        w.load_generator(weights=tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------------
# Hub resolution
# ---------------------------------------------------------------------------------------------


def test_hub_settings_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1/")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = hb.hub_settings()
    assert (s.endpoint, s.cache_dir, s.offline) == ("http://127.0.0.1:1", tmp_path / "home" / "hub", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert (hb.hub_settings().cache_dir, hb.hub_settings().offline, hb.hub_settings(offline=True).offline) == (
        tmp_path / "c", False, True)


def test_download_lands_in_cache_then_works_offline_with_server_stopped(monkeypatch, tmp_path, hf_cache, manifest):
    with FakeHub() as own:
        monkeypatch.setenv("HF_ENDPOINT", own.url)
        entry, model = publish(own, tmp_path)
        manifest([entry], default="tiny")
        first = w.resolve_weights()
        assert first.source == "download"
        expected = hf_cache / f"models--{entry['repo_id'].replace('/', '--')}" / "snapshots" / entry["revision"]
        assert first.path == expected / entry["filename"]
        assert wf.sha256_file(first.path) == entry["sha256"]
        assert torch.equal(outputs(w.load_resolved(first)), outputs(model))
        assert own.requests and all("authorization" not in r.headers for r in own.requests)  # token=False
    seen = len(own.requests)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    again = w.resolve_weights(model="tiny")
    assert again.source == "cache" and again.path == first.path
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert torch.equal(outputs(w.load_generator("tiny", offline=True)), outputs(model))
    assert time.monotonic() - start < 5 and len(own.requests) == seen


def test_offline_and_not_cached_says_how_to_fix(online, tmp_path, manifest):
    entry, _ = publish(online, tmp_path)
    manifest([entry], default="tiny")
    seen = len(online.requests)
    with pytest.raises(MsdnError, match=r"msdn weights download tiny` on a connected machine") as info:
        w.load_generator(offline=True)
    assert "--weights PATH" in str(info.value) and len(online.requests) == seen


def test_tampered_cache_is_refused_offline_and_replaced_online(online, tmp_path, manifest):
    entry, model = publish(online, tmp_path)
    manifest([entry], default="tiny")
    cached = w.resolve_weights().path
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    blob.write_bytes(bytes(data))

    with pytest.raises(MsdnError, match=r"refusing cached file .* for model 'tiny': sha256 .*manifest pins"):
        w.load_generator(offline=True)
    runner_result = runner.invoke(app, ["weights", "verify", "tiny"])
    assert runner_result.exit_code == 1 and "MISMATCH" in runner_result.output

    blob.write_bytes(bytes(data[:-10]))  # truncated: caught by size before hashing
    with pytest.raises(MsdnError, match=rf"size {len(data) - 10} bytes, the manifest pins {len(data)}"):
        w.load_generator(offline=True)

    fixed = w.resolve_weights()  # online: the bad copy is replaced, never used
    assert fixed.source == "download" and wf.sha256_file(fixed.path) == entry["sha256"]
    assert torch.equal(outputs(w.load_resolved(fixed)), outputs(model))
    assert runner.invoke(app, ["weights", "verify"]).exit_code == 0


def test_wrong_revision_repo_or_file_gives_one_line(online, tmp_path, manifest):
    entry, _ = publish(online, tmp_path)
    bad_rev = {**entry, "name": "rev", "revision": "f" * 40}
    bad_repo = {**entry, "name": "repo", "repo_id": "tester/absent"}
    bad_file = {**entry, "name": "file", "filename": "other.safetensors"}
    manifest([bad_rev, bad_repo, bad_file])
    for name, message in [("rev", f"revision {'f' * 40} of model 'rev' does not exist in {entry['repo_id']}"),
                          ("repo", "repository tester/absent on http://127.0.0.1"),
                          ("file", "file other.safetensors not found in")]:
        with pytest.raises(MsdnError, match=message) as info:
            w.load_generator(name)
        assert "\n" not in str(info.value)
    result = runner.invoke(app, ["weights", "download", "rev"])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("field, value, message", [("sha256", "0" * 64, "sha256 [0-9a-f]{12}"),
                                                     ("size_bytes", 123, r"size \d+ bytes, the manifest pins 123")])
def test_manifest_with_wrong_hash_or_size_is_refused(online, tmp_path, manifest, field, value, message):
    entry, _ = publish(online, tmp_path)
    manifest([{**entry, field: value}], default="tiny")
    with pytest.raises(MsdnError, match=rf"refusing downloaded file .* for model 'tiny': {message}"):
        w.load_generator()
    with pytest.raises(MsdnError, match="refusing"):  # the bad file in the cache is never used either
        w.load_generator(offline=True)


def test_bundled_file_is_verified_and_needs_no_network(monkeypatch, tmp_path, hf_cache, manifest):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    model = tiny_model(4)
    path = manifest.bundled_dir / "tiny-bundled.safetensors"
    wf.save_weights(path, model.state_dict(), TINY)
    entry = pub.entry_template("tiny", TINY, path, {}, repo_id="tester/b", revision="c" * 40)
    manifest([{**entry, "bundled": path.name}], default="tiny")
    resolved = w.resolve_weights()
    assert resolved.source == "bundled" and resolved.path == path
    assert torch.equal(outputs(w.load_resolved(resolved)), outputs(model))

    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(MsdnError, match=r"refusing bundled file .*: sha256"):
        w.load_generator(offline=True)


def test_bundled_only_model_needs_no_hub_fields(monkeypatch, tmp_path, hf_cache, manifest):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    model = tiny_model(5)
    path = manifest.bundled_dir / "tiny-only.safetensors"
    wf.save_weights(path, model.state_dict(), TINY)
    entry = pub.entry_template("tiny", TINY, path, {})
    entry = {k: v for k, v in entry.items() if k not in ("repo_id", "revision")} | {"bundled": path.name}
    manifest([entry], default="tiny")
    parsed = mf.load_manifest().entry()
    assert parsed.repo_id is None and parsed.revision is None and parsed.to_dict() == entry  # round trip
    assert w.local_copies(parsed) == {"bundled": path}
    assert w.fetch_model(parsed, force=True).source == "bundled"  # nothing to download it from
    assert torch.equal(outputs(w.load_generator()), outputs(model))
    path.unlink()
    with pytest.raises(MsdnError, match="ships inside the package, but .* is missing: reinstall msdn-deblur"):
        w.load_generator()


def test_manifest_config_must_match_the_file(online, tmp_path, manifest):
    entry, _ = publish(online, tmp_path)
    other = {**TINY.to_dict(), "dropout": 0.0}
    manifest([{**entry, "config": other}], default="tiny")
    with pytest.raises(MsdnError, match="differs from the manifest entry 'tiny'"):
        w.load_generator()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_download_shows_progress_for_a_large_file(online, tmp_path, manifest):
    data = os.urandom(3_000_000)
    commit = online.add_file("tester/big", "big.safetensors", data)
    src = tmp_path / "big.safetensors"
    src.write_bytes(data)
    entry = pub.entry_template("big", TINY, src, {}, repo_id="tester/big", revision=commit)
    manifest([entry], default="big")

    result = runner.invoke(app, ["weights", "download"])
    assert result.exit_code == 0, result.output
    assert "3.0/3.0 MB" in result.stderr and "sha256 verified" in result.stderr
    path = Path(result.stdout.strip())
    assert path.read_bytes() == data

    calls: list[tuple[int, int]] = []
    w.fetch_model(mf.load_manifest().entry("big"), force=True, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 3_000_000) and calls[-1] == (3_000_000, 3_000_000)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_list_info_and_verify(online, tmp_path, manifest, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables fold long hashes at the default 80 columns
    entry, _ = publish(online, tmp_path)
    manifest([entry, {**valid_entry(), "name": "other"}], default="tiny")
    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "tiny" in listed.stdout and "other" in listed.stdout
    assert "cache" not in listed.stdout and "psnr 27.5" in listed.stdout

    assert runner.invoke(app, ["weights", "download", "tiny"]).exit_code == 0
    listed = runner.invoke(app, ["weights", "list"])
    row = next(line for line in listed.stdout.splitlines() if "tiny" in line)
    assert "*" in row and "cache" in row
    info = runner.invoke(app, ["weights", "info", "tiny"])
    assert info.exit_code == 0 and entry["sha256"] in info.stdout and entry["revision"] in info.stdout
    verified = runner.invoke(app, ["weights", "verify"])
    assert verified.exit_code == 0
    assert "ok tiny (cache)" in verified.stderr and "other: not downloaded" in verified.stderr
    unknown = runner.invoke(app, ["weights", "info", "nope"])
    assert unknown.exit_code == 1 and "known models: tiny, other" in unknown.output


def test_verify_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    path = tmp_path / "mine.safetensors"
    model = tiny_model()
    wf.save_weights(path, model.state_dict(), TINY)
    ok = runner.invoke(app, ["weights", "verify", "--weights", str(path)])
    params = sum(p.numel() for p in model.parameters())
    assert ok.exit_code == 0, ok.output
    assert f"{params:,} parameters" in ok.stderr and wf.sha256_file(path) in ok.stderr
    path.write_bytes(path.read_bytes()[:100])  # truncated
    broken = runner.invoke(app, ["weights", "verify", "--weights", str(path)])
    assert broken.exit_code == 1 and "not a readable safetensors file" in broken.output
    assert "Traceback" not in broken.output


def test_export_round_trip_and_push_to_the_hub(online, tmp_path, manifest):
    model = tiny_model(5)
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"generator": model.state_dict(), "model_config": TINY.to_dict(), "step": 1234,
                "best_val_psnr": 26.25}, ckpt)
    out = tmp_path / "pub" / "msdn-tiny.safetensors"
    out.parent.mkdir()
    unrelated = {name: f"someone else's {name}\n" for name in ("README.md", "config.json")}
    for name, text in unrelated.items():  # a project folder: its own README and config must survive
        (out.parent / name).write_text(text)

    result = runner.invoke(app, ["weights", "export", str(ckpt), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["sha256"] == wf.sha256_file(out) and printed["size_bytes"] == out.stat().st_size
    assert printed["metrics"] == {"best_val_psnr": 26.25} and printed["name"] == "msdn-tiny"
    assert torch.equal(outputs(w.load_generator(weights=out)), outputs(model))
    config_file, card_file = out.parent / "msdn-tiny.config.json", out.parent / "msdn-tiny.md"
    assert MSDNConfig.from_dict(json.loads(config_file.read_text())["msdn_config"]) == TINY
    assert {name: (out.parent / name).read_text() for name in unrelated} == unrelated
    card = card_file.read_text()
    assert "| best_val_psnr | 26.25 |" in card and "1234" in card

    again = runner.invoke(app, ["weights", "export", str(ckpt), "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    half = tmp_path / "pub" / "half.safetensors"
    assert runner.invoke(app, ["weights", "export", str(ckpt), "-o", str(half), "--dtype", "fp16",
                               "--overwrite"]).exit_code == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size
    assert torch.allclose(outputs(w.load_generator(weights=half)), outputs(model), atol=2e-2)
    pub.export_checkpoint(ckpt, out, overwrite=True)  # put the fp32 card/config back beside it

    pushed = runner.invoke(app, ["weights", "push", "msdn-tiny", "--repo-id", "tester/pushed",
                                 "--weights", str(out), "--token", "hf_test_token", "--private"])
    assert pushed.exit_code == 0, pushed.output
    new_entry = json.loads(pushed.stdout)
    commit = online.commits[-1]
    assert commit["repo_id"] == "tester/pushed" and commit["authorization"] == "Bearer hf_test_token"
    assert commit["files"] == {"msdn-tiny.safetensors": out.read_bytes(),
                               "config.json": config_file.read_bytes(), "README.md": card_file.read_bytes()}
    assert online.created[-1]["visibility"] == "private"
    assert new_entry["revision"] == online.branches["tester/pushed"]["main"]

    manifest([new_entry], default="msdn-tiny")  # the printed entry is valid and resolves from the Hub
    resolved = w.resolve_weights()
    assert resolved.source == "download"
    assert torch.equal(outputs(w.load_resolved(resolved)), outputs(model))


def test_push_errors_are_one_line(online, tmp_path):
    result = runner.invoke(app, ["weights", "push", "x", "--repo-id", "tester/x", "--weights",
                                 str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1 and "weights file not found" in result.output
    path = tmp_path / "x.safetensors"
    wf.save_weights(path, tiny_model().state_dict(), TINY)
    result = runner.invoke(app, ["weights", "push", "x", "--repo-id", "tester/x", "--weights", str(path),
                                 "--token", "t", "--revision", "no-such-branch"])
    assert result.exit_code == 1 and "branch 'no-such-branch' does not exist" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_unreachable_endpoint_gives_one_line_after_retries(monkeypatch, hf_cache, manifest):
    """huggingface_hub retries a refused connection for ~23 s before giving up, hence slow."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    manifest([valid_entry()], default="gopro")
    with pytest.raises(MsdnError, match=r"could not be downloaded from owner/repo on http://127.0.0.1:9 .*"
                                        r"msdn weights download gopro") as info:
        w.load_generator()
    assert "\n" not in str(info.value)


def test_an_unreachable_endpoint_prints_one_line_not_the_hub_clients_retries(hf_cache, manifest):
    path = manifest([valid_entry()], default="gopro")
    code = ("import pathlib, sys, time\n"
            "time.sleep = lambda s: None  # skip the retries' back-off (~23 s), not the retries\n"
            "import deblur_cli.weights.manifest as mf\n"
            "mf.MANIFEST_PATH = pathlib.Path(sys.argv[1])\n"
            "from deblur_cli.cli import main\n"
            "sys.argv = ['msdn', 'weights', 'download', 'gopro']\n"
            "main()\n")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert (done.stdout + done.stderr).strip().splitlines() == [
        "Error: model 'gopro' could not be downloaded from owner/repo on http://127.0.0.1:9 (after "
        "huggingface_hub's retries) and is not in the Hub cache " + f"{hf_cache}: check the network, or run "
        "`msdn weights download gopro` on a connected machine, or pass --weights PATH"]


def test_export_from_a_trained_safetensors_keeps_its_metrics(tmp_path):
    model = tiny_model(6)
    src = tmp_path / "best.safetensors"  # as `msdn train` exports it: scalars in the metadata
    wf.save_weights(src, model.state_dict(), TINY, metadata={"step": "500", "val_psnr": "24.5000"})
    (tmp_path / "out").mkdir()
    result = pub.export_checkpoint(src, tmp_path / "out" / "m.safetensors")
    assert result.entry["metrics"] == {"val_psnr": 24.5}
    assert "| val_psnr | 24.5 |" in result.readme.read_text() and "500" in result.readme.read_text()
    assert torch.equal(outputs(w.load_generator(weights=result.weights)), outputs(model))


def test_deblur_tiling_defaults_come_from_the_manifest_entry(online, manifest, tmp_path):
    from deblur_cli.weights.resolve import recommended_tiling

    entry, _ = publish(online, tmp_path)
    manifest([{**entry, "tile": 128, "overlap": 16}], default="tiny")
    assert recommended_tiling("tiny") == (128, 16)
    assert recommended_tiling(None) == (128, 16)  # the default model's
    assert recommended_tiling(None, weights=tmp_path / "any.safetensors") == (256, 32)  # a file: the tool's defaults
    with pytest.raises(MsdnError, match="unknown model 'nope'"):
        recommended_tiling("nope")


def test_eval_tiling_defaults_come_from_the_manifest_entry(online, manifest, tmp_path, monkeypatch):
    """`msdn eval --model NAME` tiles as the manifest says, as `msdn deblur --model NAME` does."""
    import numpy as np
    from PIL import Image

    from deblur_cli.evaluation import evaluate as ev

    entry, _ = publish(online, tmp_path)
    manifest([{**entry, "tile": 64, "overlap": 8}], default="tiny")
    data = tmp_path / "data"
    for folder in ("blur", "sharp"):
        (data / folder).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            data / folder / "a.png")
    seen: list[tuple[int, int]] = []
    real = ev.deblur
    monkeypatch.setattr(ev, "deblur", lambda model, image, **kw: seen.append((kw["tile"], kw["overlap"]))
                        or real(model, image, **kw))
    result = runner.invoke(app, ["eval", str(data), "--model", "tiny", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert set(seen) == {(64, 8)}
    seen.clear()
    result = runner.invoke(app, ["eval", str(data), "--model", "tiny", "--device", "cpu", "--tile", "32",
                                 "--overlap", "4"])
    assert result.exit_code == 0, result.output
    assert set(seen) == {(32, 4)}  # options given override the model's
    path_contender = ev.load_contenders([], [w.resolve_weights("tiny").path], torch.device("cpu"))[0]
    assert (path_contender.tile, path_contender.overlap) == (256, 32)  # a file by path: the tool's defaults
