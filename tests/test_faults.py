"""Faults and hostile input: a full or failing disk, a kill mid-write, corrupt files, and the rules that
keep a user's photos safe. Every case ends in one line and a non-zero exit, never a traceback, and
never a broken or half-written file in place of a good one.

The disk faults go through `files._write_chunk` (the one `os.write` every msdn output goes through)
and `os.fsync`; the kills run msdn in a subprocess whose writes stall half-way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, sha256
from PIL import Image
from typer.testing import CliRunner

from deblur_cli.weights import checkpoint as ck
from deblur_cli import cli
from deblur_cli import files
from deblur_cli.weights import manifest as mf
from deblur_cli.weights import weightfile as wf
from deblur_cli.weights import resolve as w
from deblur_cli.errors import MsdnError
from deblur_cli.nets.model import MSDN, MSDNConfig

FAST = ["--tile", "64", "--overlap", "16", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["jpg", "bmp", "png", "tif", "webp"]
RECORD = ".msdn-outputs.jsonl"  # pipeline.RECORD, spelled out: the record's name is part of the user's folder


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli.console, "_width", 240)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:"), self.err
        return lines[0]


def run(*args: object) -> Result:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Result(result.exit_code, result.stdout, result.stderr)


def photo(path: Path, h: int = 40, w_: int = 50, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4}[mode]
    Image.fromarray(rng.integers(0, 256, (h, w_, channels), dtype=np.uint8), mode).save(path)
    return path


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".msdn-tmp-*"))


def fail_after(monkeypatch: pytest.MonkeyPatch, budget: int, error: int = errno.ENOSPC) -> None:
    """The disk takes `budget` more bytes, then every write fails with `error` (a full disk)."""
    left = [budget]

    def write(fd: int, data: memoryview) -> int:
        if left[0] <= 0:
            raise OSError(error, os.strerror(error))
        n = min(len(data), left[0])
        left[0] -= n
        return os.write(fd, data[:n])  # a short write, as write(2) does when the disk fills

    monkeypatch.setattr(files, "_write_chunk", write)


# --- 2. a full or failing disk never leaves a broken file in place of a good one --------------------


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_disk_full_during_an_image_write_keeps_the_old_output(tmp_path: Path, weights: Path, ext: str, error: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = photo(tmp_path / "a.png")
    target = tmp_path / f"out.{ext}"
    assert run("deblur", src, "-o", target, "--weights", weights, *FAST).code == 0
    good = sha256(target)
    fail_after(monkeypatch, 256, error)
    result = run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    assert result.code == 1 and os.strerror(error) in result.error_line
    assert "the existing file is unchanged" in result.error_line and "Wrote" not in result.out
    assert sha256(target) == good and temporaries(tmp_path) == []


@pytest.mark.parametrize("ext", ["jpg", "bmp"])
def test_a_write_that_silently_loses_bytes_is_caught(tmp_path: Path, weights: Path, ext: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The battery's case: the encoder believes it wrote everything, the disk kept less."""
    src = photo(tmp_path / "a.png")
    target = tmp_path / f"out.{ext}"

    def lossy(fd: int, data: memoryview) -> int:
        os.write(fd, data[: len(data) // 2])
        return len(data)

    monkeypatch.setattr(files, "_write_chunk", lossy)
    result = run("deblur", src, "-o", target, "--weights", weights, *FAST)
    assert result.code == 1 and "bytes reached the disk" in result.error_line
    assert not target.exists() and temporaries(tmp_path) == []


def test_short_writes_are_completed(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = photo(tmp_path / "a.png")
    monkeypatch.setattr(files, "_write_chunk", lambda fd, data: os.write(fd, data[:7]))  # 7 bytes a call
    assert run("deblur", src, "-o", tmp_path / "out.jpg", "--weights", weights, *FAST).code == 0
    with Image.open(tmp_path / "out.jpg") as im:
        im.load()
        assert im.size == (50, 40)


def test_fsync_error_keeps_the_old_output(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = photo(tmp_path / "a.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"an earlier output")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    result = run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    assert result.code == 1 and "Input/output error" in result.error_line
    assert target.read_bytes() == b"an earlier output" and temporaries(tmp_path) == []


def test_deblur_dir_counts_a_failed_write_as_failed(tmp_path: Path, weights: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    photo(root / "a.jpg")
    photo(root / "b.bmp")
    fail_after(monkeypatch, 0)
    result = run("deblur-dir", root, "--weights", weights, *FAST)
    assert result.code == 1 and result.out == ""  # nothing claimed as written
    assert "No space left on device" in result.err
    out = tmp_path / "in_deblurred"
    assert temporaries(out) == [] and sorted(p.name for p in out.iterdir() if p.name != RECORD) == []


def test_export_and_weights_writes_on_a_full_disk(tmp_path: Path, weights: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "best.pt"
    torch.save({"generator": wf.load_weights_file(weights)[1], "model_config": TINY.to_dict(), "step": 3}, ckpt)
    out = tmp_path / "pub" / "m.safetensors"
    out.parent.mkdir()
    assert run("weights", "export", ckpt, "-o", out).code == 0
    before = {p.name: sha256(p) for p in out.parent.iterdir()}
    assert set(before) == {"m.safetensors", "m.config.json", "m.md"}
    fail_after(monkeypatch, 1000)
    result = run("weights", "export", ckpt, "-o", out, "--overwrite")
    assert result.code == 1 and "No space left on device" in result.error_line
    assert {p.name: sha256(p) for p in out.parent.iterdir()} == before


# --- 3. modes: what a plain write would give, or the replaced file's ---------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_umask_mode(tmp_path: Path, weights: Path, umask: int) -> None:
    src = photo(tmp_path / "a.png")
    old = os.umask(umask)
    try:
        assert run("deblur", src, "-o", tmp_path / "out.jpg", "--weights", weights, *FAST).code == 0
        files.atomic_write_bytes(tmp_path / "report.json", b"{}")
        wf.save_weights(tmp_path / "g.safetensors", MSDN(TINY).state_dict(), TINY)
    finally:
        os.umask(old)
    for name in ("out.jpg", "report.json", "g.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, weights: Path) -> None:
    src = photo(tmp_path / "a.png")
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    target.chmod(0o640)
    assert run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST).code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() != b"old"


# --- 11. SIGKILL / SIGTERM in the middle of a write ----------------------------------------------------

STALLING_MSDN = """
import os, sys, time
from deblur_cli import files
real, marker = files._write_chunk, sys.argv[1]
def stall(fd, data):
    n = real(fd, data[: max(1, len(data) // 2)])
    open(marker, "w").close()
    time.sleep(120)
    return n
files._write_chunk = stall
from deblur_cli.cli import app
sys.argv = ["msdn", *sys.argv[2:]]
app()
"""


def _stalled_msdn(tmp_path: Path, *args: object) -> subprocess.Popen:
    """msdn in a subprocess, stopped half-way through writing its first file."""
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.Popen([sys.executable, "-c", STALLING_MSDN, str(marker), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a safety net only: a busy 2-core machine took over 90 s to import and load
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"msdn never reached its write: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_sigkill_mid_write_then_a_rerun_completes_and_cleans_up(tmp_path: Path, weights: Path) -> None:
    src = photo(tmp_path / "a.png", 60, 70)
    target = tmp_path / "out.png"
    assert run("deblur", src, "-o", target, "--weights", weights, *FAST).code == 0
    good = sha256(target)
    proc = _stalled_msdn(tmp_path, "deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert sha256(target) == good  # no partial output where the good one was
    assert len(temporaries(tmp_path)) == 1  # what a kill -9 leaves behind

    result = run("deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    assert result.code == 0 and result.out.startswith(f"Wrote {target}")
    assert temporaries(tmp_path) == []
    with Image.open(target) as im:
        im.load()
        assert im.size == (70, 60)


def test_sigterm_mid_write_is_a_clean_stop(tmp_path: Path, weights: Path) -> None:
    src = photo(tmp_path / "a.png", 60, 70)
    target = tmp_path / "out.jpg"
    target.write_bytes(b"an earlier output")
    proc = _stalled_msdn(tmp_path, "deblur", src, "-o", target, "--weights", weights, "--overwrite", *FAST)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["Error: terminated"] and out == ""
    assert target.read_bytes() == b"an earlier output" and temporaries(tmp_path) == []


def test_stale_temporaries_of_live_processes_are_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".msdn-tmp-{dead.pid}-abcd1234.png"
    live = tmp_path / f".msdn-tmp-{os.getppid()}-abcd1234.png"
    other = tmp_path / ".hidden.png"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert files.remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_the_sweep_never_deletes_a_users_file_that_looks_like_a_temporary(tmp_path: Path, weights: Path) -> None:
    """Issue #20 item 1: only names in msdn's own namespace are ever swept, whatever their age."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    users = {".zshrc.tmp-20240101": b"x\n", f".notes.tmp-{dead.pid}-draft_v2.txt": b"y\n",
             ".thesis.tmp-finalver.tex": b"z\n", f".out.tmp-{dead.pid}-abcd1234.png": b"w",
             ".out.tmp-k3j4h5_x.png": b"v"}
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (time.time() - 7200, time.time() - 7200))
    src = photo(tmp_path / "photo.png")
    result = run("deblur", src, "--weights", weights, *FAST)
    assert result.code == 0 and (tmp_path / "photo_deblurred.png").is_file()
    assert {name: (tmp_path / name).read_bytes() for name in users} == users
    assert files.remove_stale_temps(tmp_path) == []


# --- 1 and 4. deblur-dir never replaces a photo it did not write, never eats its own outputs ----------


def test_overwrite_never_replaces_an_original_photo(tmp_path: Path, weights: Path) -> None:
    root = tmp_path / "in"
    photo(root / "a.jpg")
    original = photo(root / "s" / "a.jpg", 30, 30)  # a user's photo where a.jpg's output would go
    before = sha256(original)
    result = run("deblur-dir", root, "-o", root / "s", "-r", "--overwrite", "--weights", weights, *FAST)
    assert result.code == 1 and "refusing to replace it even with --overwrite" in result.error_line
    assert sha256(original) == before

    # an output deblur-dir wrote itself is replaced, and only while unchanged
    out = tmp_path / "out"
    assert run("deblur-dir", root, "-o", out, "--weights", weights, *FAST).code == 0
    assert run("deblur-dir", root, "-o", out, "--overwrite", "--weights", weights, *FAST).code == 0
    (out / "a.jpg").write_bytes((out / "a.jpg").read_bytes() + b"edited by hand")
    assert run("deblur-dir", root, "-o", out, "--overwrite", "--weights", weights, *FAST).code == 1
    assert (out / "a.jpg").read_bytes().endswith(b"edited by hand")


def test_a_run_never_takes_msdn_outputs_as_inputs(tmp_path: Path, weights: Path) -> None:
    parent = tmp_path / "photos"
    photo(parent / "trip" / "a.jpg")
    photo(parent / "b.png")
    assert run("deblur", parent / "b.png", "--weights", weights, *FAST).code == 0  # photos/b_deblurred.png
    assert run("deblur-dir", parent / "trip", "--weights", weights, *FAST).code == 0  # photos/trip_deblurred/
    assert run("deblur-dir", parent, "-o", parent / "inner", "-r", "--weights", weights, *FAST).code == 0
    for _ in range(2):  # twice, with and without -o inside the input
        result = run("deblur-dir", parent, "-r", "--weights", weights, *FAST)
        assert result.code == 0, result.err
    made = sorted(p.relative_to(tmp_path / "photos_deblurred").as_posix()
                  for p in (tmp_path / "photos_deblurred").rglob("*") if p.is_file() and p.name != RECORD)
    assert made == ["b.png", "trip/a.jpg"]
    inner = sorted(p.relative_to(parent / "inner").as_posix()
                   for p in (parent / "inner").rglob("*") if p.is_file() and p.name != RECORD)
    assert inner == ["b.png", "trip/a.jpg"]


# --- 5. weights that would give black images, or an absurd network ------------------------------------


def _weights_with(tmp_path: Path, change) -> Path:  # noqa: ANN001
    state = MSDN(TINY).state_dict()
    config = change(state)
    config = config if isinstance(config, MSDNConfig) else TINY
    path = tmp_path / "bad.safetensors"
    wf.save_weights(path, state, config)
    return path


@pytest.mark.parametrize("case, change, message", [
    ("nan", lambda s: s["head.bias"].fill_(float("nan")), "NaN or infinite"),
    ("inf", lambda s: s["head.bias"].fill_(float("inf")), "NaN or infinite"),
    ("int", lambda s: s.update({k: v.to(torch.int32) for k, v in s.items()}), "not floating-point"),
    ("huge", lambda s: MSDNConfig(growth_rate=1_000_000, stem_channels=100_000), "do not fit the model"),
    ("deep", lambda s: MSDNConfig(encoder_layers=(300,) * 3, decoder_layers=(300,) * 3), "at most"),
])
def test_broken_weights_are_refused_at_load(tmp_path: Path, case: str, change, message: str,  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = photo(tmp_path / "a.png")
    built = []
    real_init = MSDN.__init__

    def recording_init(self: MSDN, config: MSDNConfig = MSDNConfig()) -> None:
        if torch.empty(0).device.type != "meta":
            built.append(config)
        real_init(self, config)

    path = _weights_with(tmp_path, change)
    monkeypatch.setattr(MSDN, "__init__", recording_init)
    result = run("deblur", src, "--weights", path, *FAST)
    assert result.code == 1 and message in result.error_line
    assert built == [] and not (tmp_path / "a_deblurred.png").exists()  # refused before any real network


# --- 6. export never touches side files it does not own -----------------------------------------------


def test_export_leaves_an_unrelated_readme_and_config_alone(tmp_path: Path, weights: Path) -> None:
    ckpt = tmp_path / "best.pt"
    torch.save({"generator": wf.load_weights_file(weights)[1], "model_config": TINY.to_dict()}, ckpt)
    (tmp_path / "README.md").write_text("# my project\n")
    (tmp_path / "config.json").write_text('{"mine": true}\n')
    assert run("weights", "export", ckpt, "-o", tmp_path / "m.safetensors", "--overwrite").code == 0
    assert (tmp_path / "README.md").read_text() == "# my project\n"
    assert (tmp_path / "config.json").read_text() == '{"mine": true}\n'
    assert wf.read_config(tmp_path / "m.safetensors") == TINY


# --- 7, 12, 13, 14: messages and streams ----------------------------------------------------------


def test_rgba_to_jpeg_is_composited_on_white_and_said(tmp_path: Path, weights: Path) -> None:
    src = tmp_path / "a.png"
    pixels = np.zeros((40, 50, 4), np.uint8)  # fully transparent black
    Image.fromarray(pixels, "RGBA").save(src)
    result = run("deblur", src, "-o", tmp_path / "a.jpg", "--weights", weights, *FAST)
    assert result.code == 0
    assert [line for line in result.err.splitlines() if line] == [
        "Warning: a.jpg: JPEG has no transparency; transparent areas were composited on white "
        "(write .png, .webp or .tif to keep them)"]
    assert np.asarray(Image.open(tmp_path / "a.jpg")).min() >= 250  # white, not the hidden black


def test_results_on_stdout_one_line_a_file(tmp_path: Path, weights: Path) -> None:
    src = photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "b.png")
    single = run("deblur", src, "--weights", weights, *FAST)
    assert single.code == 0 and single.err == ""
    assert len(single.out.splitlines()) == 1 and single.out.startswith(f"Wrote {tmp_path / 'in' / 'a_deblurred.png'}")
    folder = run("deblur-dir", tmp_path / "in", "--weights", weights, *FAST)
    out_dir = tmp_path / "in_deblurred"
    assert folder.out.splitlines() == [f"Wrote {out_dir / 'a.png'}", f"Wrote {out_dir / 'b.png'}"]
    assert "" not in folder.err.splitlines()  # no blank lines left by a progress bar off a terminal


def test_bad_photo_is_reported_before_missing_weights(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo " * 20)
    result = run("deblur", broken, "--offline", *FAST)
    assert result.code == 1 and "not an image file" in result.error_line
    big = photo(tmp_path / "big.png")
    result = run("deblur", big, "--offline", "--max-pixels", "100", *FAST)
    assert result.code == 1 and "over the limit" in result.error_line


def test_out_of_memory_is_one_line(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deblur_cli.inference.pipeline as pipeline

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr(pipeline, "load_image", no_memory)
    result = run("deblur", photo(tmp_path / "a.png"), "--weights", weights, "--max-pixels", str(10**12), *FAST)
    assert result.code == 1 and "not enough memory" in result.error_line


def test_messages_keep_brackets_and_help_has_no_bool_metavar(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "deblur_cli.training.train", None)  # as if kornia were missing
    result = run("train", "--data", tmp_path)
    assert result.code == 1 and "pip install 'msdn-deblur[train]'" in result.error_line
    for command in (["deblur", "--help"], ["deblur-dir", "--help"], ["train", "--help"], ["--help"]):
        text = run(*command).out
        assert "<bool>" not in text and "--help" in text, command
    text = " ".join(run("train", "--help").out.replace("│", " ").split())  # help text is not eaten as markup
    assert "NHWC memory layout (oneDNN and cuDNN run it faster) (default: on)." in text
    assert "Generator growth rate (default: 16)." in text


# --- corrupt and hostile files, for every file msdn reads ---------------------------------------------


def _zip_of_text() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/data.pkl", "not a pickle")
    return buf.getvalue()


HOSTILE = {
    "text": b"hello, I am a README\n" * 10,
    "empty": b"",
    "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "zip": _zip_of_text(),
    "truncated pickle": b"\x80\x02}q\x00(X",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("reader", ["image", "weights", "checkpoint", "vgg", "manifest", "record"])
def test_hostile_files_give_one_line(tmp_path: Path, kind: str, reader: str) -> None:
    from deblur_cli.inference import pipeline
    from deblur_cli.training import vgg
    from deblur_cli.imaging.images import load_image

    suffix = {"image": ".png", "weights": ".safetensors", "checkpoint": ".pt", "vgg": ".pth",
              "manifest": ".json", "record": ""}[reader]
    path = tmp_path / f"hostile{suffix}"
    path.write_bytes(HOSTILE[kind])
    load = {"image": load_image, "weights": lambda p: w.load_generator(weights=p), "checkpoint": ck.load_checkpoint,
            "vgg": vgg.load_vgg19, "manifest": mf.load_manifest}.get(reader)
    if reader == "record":  # a damaged record only protects more: nothing counts as msdn's output
        (tmp_path / RECORD).write_bytes(HOSTILE[kind])
        assert pipeline.read_record(tmp_path) == {}
        return
    with pytest.raises(MsdnError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    if reader in ("checkpoint", "vgg") and kind in ("text", "random"):
        assert "not a PyTorch file" in message and "run code" not in message


def test_checkpoint_with_an_impossible_step_is_refused(tmp_path: Path) -> None:
    state = MSDN(TINY).state_dict()
    for step in (-5, 10**15):
        torch.save({"generator": state, "model_config": TINY.to_dict(), "step": step}, tmp_path / "c.pt")
        with pytest.raises(MsdnError, match="impossible training step"):
            ck.load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_with_wrong_shapes_is_one_line(tmp_path: Path, weights: Path) -> None:
    state = MSDN(TINY).state_dict()
    state["stem.weight"] = torch.zeros(1, 2, 3)
    ckpt = tmp_path / "c.pt"
    torch.save({"generator": state, "model_config": TINY.to_dict()}, ckpt)
    result = run("weights", "export", ckpt, "-o", tmp_path / "m.safetensors")
    assert result.code == 1 and "'stem.weight' has shape (1, 2, 3)" in result.error_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# --- 10. damaged training checkpoints given to `msdn train --resume` -------------------------------------

MICRO_RUN = ROOT / "tests" / "fixtures" / "micro-step2.pt"  # a checkpoint written by `msdn train` (test_compat)


def _damaged(tmp_path: Path, change) -> Path:  # noqa: ANN001
    checkpoint = torch.load(MICRO_RUN, weights_only=True)
    change(checkpoint)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("case, change, message", [
    ("no optimizer state", lambda c: c.pop("opt_g"),
     "is a damaged training checkpoint (no 'opt_g'); resume from another checkpoint or start a new run"),
    ("negative step", lambda c: c.update(step=-3), "records an impossible training step -3"),
    ("absurd step", lambda c: c.update(step=10**15), "records an impossible training step 1000000000000000"),
    ("no step", lambda c: c.update(step="two"), "records no training step (a whole number)"),
    ("wrong shape", lambda c: c["generator"].update({"stem.weight": torch.zeros(1, 2, 3)}),
     "is a damaged training checkpoint (size mismatch for stem.weight: copying a param with shape "
     "torch.Size([1, 2, 3]) from checkpoint"),
    ("NaN weights", lambda c: c["generator"]["stem.weight"].__setitem__((0, 1), float("nan")),
     "is a damaged training checkpoint (generator.stem.weight holds NaN or infinite values)"),
    ("infinite Adam state", lambda c: next(iter(c["opt_g"]["state"].values()))["exp_avg"].fill_(float("inf")),
     "is a damaged training checkpoint (opt_g.state.0.exp_avg holds NaN or infinite values)"),
])
def test_damaged_checkpoints_are_one_line_on_resume(tmp_path: Path, case: str, change, message: str) -> None:  # noqa: ANN001
    photos = tmp_path / "photos"
    for i in range(4):
        photo(photos / f"p{i}.png", 48, 48)
    path = _damaged(tmp_path, change)
    before = path.read_bytes()
    result = run("train", "--resume", path, "--data", photos)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith(f"Error: {path} {message}"), result.err
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("offset", [0.3, 0.5, 0.7, 0.9])
def test_a_checkpoint_overwritten_with_ff_bytes_is_never_replaced(tmp_path: Path, offset: float) -> None:
    """Issue #20 item 4: 64 bytes of 0xFF in a last.pt either load as garbage that is refused or fail to
    load; the run never trains on it and the file is never replaced."""
    photos = tmp_path / "photos"
    for i in range(4):
        photo(photos / f"p{i}.png", 48, 48)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    data = bytearray(MICRO_RUN.read_bytes())
    at = int(len(data) * offset)
    data[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    result = run("train", "--resume", path, "--data", photos, "--steps", "4")
    assert result.code == 1 and result.error_line.startswith(f"Error: {path} "), result.err
    assert path.read_bytes() == bytes(data) and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_diverging_run_stops_before_writing_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #20 item 4: the step whose loss is NaN ends the run with one line; last.pt and
    best.safetensors stay those of the last good step."""
    from deblur_cli.training import train as T

    photos = tmp_path / "photos"
    for i in range(4):
        photo(photos / f"p{i}.png", 48, 48)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(MICRO_RUN.read_bytes())
    good = T.generator_update
    monkeypatch.setattr(T, "generator_update", lambda nets, *a: good(nets, *a) if nets.sched_g.last_epoch < 4
                        else float("nan"))  # steps 3 and 4 are fine, step 5 diverges
    result = run("train", "--resume", run_dir, "--data", photos, "--steps", "8", "--checkpoint-every", "1",
                 "--val-every", "1")
    assert result.code == 1 and result.err.strip().splitlines()[-1] == (f"Error: training diverged at step 5 (loss_g is nan); nothing "
                                                      f"of it was saved, {run_dir} keeps its last checkpoint: "
                                                      "resume with a lower --lr"), result.err
    assert ck.load_training_checkpoint(run_dir)["step"] == 4 and temporaries(run_dir) == []
    assert wf.read_metadata(run_dir / "best.safetensors")["step"] == "4"


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am a README\n" * 10)
    result = run("train", "--resume", text)
    assert result.code == 1 and result.error_line == \
        f"Error: {text} is not a training checkpoint: it is not a PyTorch file at all"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_terminated_run_checkpoints_its_last_finished_step(tmp_path: Path, sig: int) -> None:
    """Issue #20 item 3: SIGTERM (or Ctrl-C) finishes the step under way and checkpoints it, though the
    periodic checkpoint is 100,000 steps away: one line, exit 128+signal, resume continues from there."""
    photos = tmp_path / "photos"
    for i in range(4):
        photo(photos / f"p{i}.png", 48, 48)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(MICRO_RUN.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deblur_cli", "train", "--resume", str(run_dir), "--data",
                             str(photos), "--steps", "100000", "--val-every", "100000", "--checkpoint-every",
                             "100000"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # the first plain progress line: training is under way
        lines.append(line)
        if line.startswith("step 3/"):
            break
    time.sleep(1)  # training, not printing
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    match = re.fullmatch(rf"Error: stopped at step (\d+), which is checkpointed: continue with --resume "
                         rf"{re.escape(str(run_dir))}", rest.strip())
    assert proc.returncode == 128 + sig and match, "".join(lines) + rest
    step = int(match.group(1))
    assert step >= 3 and ck.load_training_checkpoint(run_dir)["step"] == step and temporaries(run_dir) == []


def test_a_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """The first SIGTERM waits for a safe point; a second one does not wait for it."""
    from deblur_cli.commands.common import Terminated, stop_requests

    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.exit_code == 128 + signal.SIGTERM
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before  # the command's own handler is back


def test_the_record_is_never_followed_through_a_link(tmp_path: Path, weights: Path) -> None:
    """Issue #20 item 5: a link planted as the record makes deblur-dir append to nothing."""
    diary = tmp_path / "diary.txt"
    diary.write_text("dear diary\n")
    root, out = tmp_path / "in", tmp_path / "out"
    photo(root / "a.png")
    out.mkdir()
    (out / ".msdn-outputs.jsonl").symlink_to(diary)
    result = run("deblur-dir", root, "-o", out, "--weights", weights, *FAST)
    assert result.code == 0 and (out / "a.png").is_file()
    assert diary.read_text() == "dear diary\n" and "not a regular file msdn can append to" in result.out + result.err


@pytest.mark.parametrize("lr", ["nan", "inf", "-1"])
def test_a_non_finite_learning_rate_is_refused(tmp_path: Path, lr: str) -> None:
    """Issue #20 items 4 and 8: --lr nan/inf is one line before anything is read or written."""
    result = run("train", "--data", tmp_path, "--lr", lr, "--checkpoint-dir", tmp_path / "run")
    assert result.code == 1 and result.error_line.startswith("Error: learning rates must be positive and finite")
    assert not (tmp_path / "run").exists()


def test_a_file_that_appears_during_the_run_is_never_replaced(tmp_path: Path, weights: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #20 item 2: "already exists" is checked before inference; a user's file put there
    meanwhile must survive, and the lost race is that photo's one-line error."""
    from deblur_cli.inference import pipeline

    src = photo(tmp_path / "big.png")
    target = tmp_path / "race.png"
    real = pipeline.deblur

    def deblur_then_user_copies(*args, **kwargs):
        out = real(*args, **kwargs)
        target.write_bytes(b"the user's file")  # cp user.png race.png, 3.5 s in
        return out

    monkeypatch.setattr(pipeline, "deblur", deblur_then_user_copies)
    result = run("deblur", src, "-o", target, "--weights", weights, *FAST)
    assert result.code == 1 and "appeared while msdn was writing it and was left untouched" in result.error_line
    assert target.read_bytes() == b"the user's file" and temporaries(tmp_path) == []
    root, out = tmp_path / "in", tmp_path / "out"
    photo(root / "a.png")
    result = run("deblur-dir", root, "-o", out, "--weights", weights, *FAST)  # the same race in a folder job
    assert result.code == 0
    target = out / "b.png"
    photo(root / "b.png")
    result = run("deblur-dir", root, "-o", out, "--weights", weights, *FAST)
    assert result.code == 1 and (out / "b.png").read_bytes() == b"the user's file"


# --- issue #20 items 6, 7, 9, 10, 13: one line, never a traceback ----------------------------------------

@pytest.mark.parametrize("where", ["default output", "-o", "input"])
def test_a_name_over_255_bytes_is_one_line(tmp_path: Path, weights: Path, where: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    long_input, short = photo(tmp_path / ("L" * 250 + ".jpg")), photo(tmp_path / "short.png")
    args = {"default output": [long_input.name], "-o": [short.name, "-o", "M" * 300 + ".png"],
            "input": ["N" * 300 + ".jpg"]}[where]
    result = run("deblur", *args, "--weights", weights, *FAST)
    assert result.code == 1 and re.fullmatch(r"Error: file name too long \(\d+ bytes; a name may have at most "
                                              r"255\): ([LMN])\1{39}\.\.\.\1+(_deblurred)?\.(png|jpg)",
                                              result.error_line), result.err
    assert sorted(os.listdir(tmp_path)) == sorted([long_input.name, short.name])


def test_float8_weights_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "f8.safetensors"
    wf.save_weights(path, MSDN(TINY).state_dict(), TINY, dtype=torch.float8_e4m3fn)
    photo(tmp_path / "pairs" / "blur" / "a.png"), photo(tmp_path / "pairs" / "sharp" / "a.png")
    for command in (["deblur", photo(tmp_path / "a.png"), "--weights", path, *FAST],
                    ["eval", tmp_path / "pairs", "--weights", path]):
        result = run(*command)
        assert result.code == 1 and result.error_line.startswith("Error: weights are stored as float8_e4m3fn ("), \
            result.err


def test_a_damaged_metrics_log_does_not_stop_a_resume(tmp_path: Path) -> None:
    """A non-UTF-8 byte (or a cut line) in metrics.jsonl: the run resumes and the damaged line is dropped."""
    photos = tmp_path / "photos"
    for i in range(4):
        photo(photos / f"p{i}.png", 48, 48)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(MICRO_RUN.read_bytes())
    (run_dir / "metrics.jsonl").write_bytes(b'{"event": "step", "step": 1}\n{"event": "st\xffep", "step": 2}\n'
                                            b'{"event": "val", "st')
    result = run("train", "--resume", run_dir, "--data", photos, "--steps", "3")
    assert result.code == 0, result.err
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == '{"event": "step", "step": 1}' and [json.loads(x)["step"] for x in lines[1:]][0] == 3


def test_a_checkpoint_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.png", 48, 48)
    (tmp_path / "afile").write_text("mine")
    result = run("train", "--data", tmp_path / "photos", "--synthetic-blur", "--checkpoint-dir", tmp_path / "afile")
    assert result.code == 1 and result.error_line == \
        f"Error: --checkpoint-dir {tmp_path / 'afile'} is a file, not a folder: name a folder for the run"
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("minutes", ["nan", "inf", "0"])
def test_max_minutes_must_be_a_real_budget(tmp_path: Path, minutes: str) -> None:
    result = run("train", "--data", tmp_path, "--max-minutes", minutes, "--checkpoint-dir", tmp_path / "run")
    assert result.code == 1 and result.error_line.startswith("Error: max-minutes must be a positive number of minutes")
    assert not (tmp_path / "run").exists()


# --- issue #20 items 16, 17, 20: say what a path is ------------------------------------------------------

def test_a_fifo_or_a_device_is_named_for_what_it_is(tmp_path: Path, weights: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a named pipe"), (Path("/dev/zero"), "a character device")):
        result = run("deblur", path, "-o", tmp_path / "o.png", "--weights", weights, *FAST)
        assert result.code == 1 and result.error_line == f"Error: {path} is {kind}, not an image file"


@pytest.mark.parametrize("path, kind", [("DIR", "a directory"), ("/dev/null", "a character device")])
def test_weights_that_are_not_a_file_are_named_for_what_they_are(tmp_path: Path, path: str, kind: str) -> None:
    weights_path = tmp_path if path == "DIR" else Path(path)
    result = run("deblur", photo(tmp_path / "a.png"), "--weights", weights_path, *FAST)
    assert result.code == 1 and result.error_line == f"Error: --weights {weights_path} is {kind}, not a weights file"


def test_an_unwritable_format_names_the_option(tmp_path: Path, weights: Path) -> None:
    photo(tmp_path / "in" / "a.png")
    result = run("deblur-dir", tmp_path / "in", "-o", tmp_path / "out", "--format", "gif", "--weights", weights)
    assert result.code == 1 and result.error_line == ("Error: --format gif: msdn does not write .gif images (use one "
                                                      "of .avif, .bmp, .heic, .heif, .jpeg, .jpg, .png, .tif, .tiff, "
                                                      ".webp)")


@pytest.mark.parametrize("bad, shown", [({"growth_rate": "16"}, 'growth_rate is "16", expected a whole number'),
                                        ({"encoder_layers": [4, "x"]}, 'encoder_layers is [4, "x"], expected a list'),
                                        ({"pyramid": 1}, "pyramid is 1, expected true or false")])
def test_a_bad_config_value_in_weight_metadata_is_named(tmp_path: Path, bad: dict, shown: str) -> None:
    """Issue #20 item 21: the key and value, not "'<' not supported between instances of 'str' and 'int'"."""
    path = tmp_path / "w.safetensors"
    wf.save_weights(path, MSDN(TINY).state_dict(), TINY)
    meta = wf.read_metadata(path)
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), str(path), metadata={**meta, "msdn_config": json.dumps({**TINY.to_dict(), **bad})})
    result = run("deblur", photo(tmp_path / "a.png"), "--weights", path, *FAST)
    assert result.code == 1 and shown in result.error_line and "not supported" not in result.error_line, result.err


def test_an_export_that_names_a_directory_is_one_line(tmp_path: Path) -> None:
    """Issue #20 item 22: not "already exists (pass --overwrite)", which would not help."""
    folder = tmp_path / "g.safetensors"
    folder.mkdir()
    for flags in ([], ["--overwrite"]):
        result = run("train", "--data", tmp_path, "--export", folder, "--checkpoint-dir", tmp_path / "run", *flags)
        assert result.code == 1 and result.error_line == f"Error: --export {folder} is a directory: name a " \
            ".safetensors file"


@pytest.mark.parametrize("quality", ["0", "101"])
def test_an_out_of_range_option_is_a_usage_error_as_the_readme_says(tmp_path: Path, weights: Path,
                                                                    quality: str) -> None:
    """Issue #20 item 23: README and behaviour agree: a malformed command line exits 2 with the usage box."""
    readme = (ROOT / "README.md").read_text()
    assert "`--quality 0`, an option value out of its range) is\n  a usage error: Typer's usage box and exit code 2" \
        in readme
    result = run("deblur", photo(tmp_path / "a.png"), "--quality", quality, "--weights", weights)
    assert result.code == 2 and "Invalid value for '--quality'" in result.err and not (tmp_path / "a_deblurred.png").exists()


def test_deblur_dir_counts_every_file_it_leaves_out_with_a_reason(tmp_path: Path, weights: Path) -> None:
    """Issue #20 item 14: a user's cat_deblurred.png and a notes file are counted and named, an AVIF photo
    is deblurred, to AVIF since issue #21 (msdn writes AVIF when Pillow has it)."""
    from PIL import features

    root = tmp_path / "in"
    photo(root / "cat.jpg")
    photo(root / "cat_deblurred.png")
    (root / "notes.txt").write_text("hi")
    if features.check("avif"):
        Image.open(photo(root / "tmp.png")).save(root / "x.avif")
        (root / "tmp.png").unlink()
    result = run("deblur-dir", root, "-o", tmp_path / "out", "--weights", weights, *FAST)
    assert result.code == 0, result.err
    rows = " ".join(result.err.split())
    assert "cat_deblurred.png │ named as msdn deblur's output of cat.* beside it" in rows
    assert "notes.txt │ not a photo type deblur-dir reads (.txt)" in rows
    assert re.search(r"│ +[23] │ +0 │ +2 │ +0 │", rows), rows
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert written == (["cat.jpg", "x.avif"] if features.check("avif") else ["cat.jpg"])


def test_an_animated_photo_is_refused_in_one_line(tmp_path: Path, weights: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #20 item 12: only the first frame used to be deblurred, silently. msdn refuses, before any weights
    are looked for; deblur-dir reports the file as failed and goes on."""
    monkeypatch.setattr(cli.console, "_width", 400)  # the failure row stays on one line whatever tmp_path's length
    rng = np.random.default_rng(7)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(4)]
    root = tmp_path / "in"
    root.mkdir()
    gif, webp = root / "clip.gif", root / "clip.webp"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=100)
    photo(root / "still.png")
    for src in (gif, webp):
        message = f"Error: {src} is an animated image (4 frames); msdn deblurs still photos: extract the frames first"
        result = run("deblur", src, "-o", tmp_path / "out.png", "--offline", *FAST)  # no weights needed to refuse
        assert result.code == 1 and result.error_line == message and not (tmp_path / "out.png").exists()
    result = run("deblur-dir", root, "-o", tmp_path / "out", "--weights", weights, *FAST)
    assert result.code == 1 and result.out.splitlines() == [f"Wrote {tmp_path / 'out' / 'still.png'}"]
    rows = " ".join(result.err.split())
    assert (f"{webp} │ {webp} is an animated image (4 frames); msdn deblurs still photos: extract the frames first"
            in rows), rows
    assert "clip.gif │ not a photo type deblur-dir reads (.gif)" in rows
    assert re.search(r"│ +1 │ +0 │ +1 │ +1 │", rows), rows
