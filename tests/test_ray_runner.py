"""`msdn deblur-dir --ray` on a local two-CPU Ray cluster (started once for the module): the same outputs,
failures, summary, exit code and record as a local run; a worker killed mid-photo; a second run skipping."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from deblur_cli import cli  # noqa: E402
from deblur_cli.commands.deblur import optional_ray_address  # noqa: E402
from deblur_cli.inference.pipeline import DeblurSettings, plan_directory, read_record  # noqa: E402
from deblur_cli.inference.ray_runner import (ClusterOptions, WorkerSpec, deblur_directory_on_ray,  # noqa: E402
                                             worker_count)
from deblur_cli.weights.resolve import Selection  # noqa: E402

FAST = ["--tile", "64", "--overlap", "16", "--device", "cpu"]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, no file about it in the home folder


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    """One local cluster for the module: 2 CPUs, no dashboard, its session files in a short temp folder."""
    temp = tempfile.mkdtemp(prefix="msdnray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "_width", 240)  # no wrapping inside the table cells asserted on


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def _photos(root: Path, count: int, side: int = 70) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side + 20, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def _counts(output: str) -> list[int]:
    """The summary's row: processed, skipped, left out, failed."""
    row = next(line for line in output.splitlines() if re.fullmatch(r"[│\s\d]+", line) and "│" in line)
    return [int(n) for n in row.replace("│", " ").split()]


def test_ray_matches_a_local_run_reports_a_corrupt_photo_and_skips_on_rerun(tmp_path: Path, weights: Path) -> None:
    src = _photos(tmp_path / "src", 5)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, local = run("deblur-dir", src, "-o", tmp_path / "local", "--weights", weights, *FAST)
    assert code == 1, local
    code, out = run("deblur-dir", src, "-o", tmp_path / "ray", "--weights", weights, *FAST,
                    "--ray", "--ray-workers", "2")
    assert code == 1, out
    assert _counts(out) == _counts(local) == [5, 0, 0, 1]
    assert "with ray, 2 workers: torch" in out and "1 thread" in out
    assert re.search(r"bad\.png\s+│ .*bad\.png is not an image file Pillow can read", out), out
    assert sorted(line for line in out.splitlines() if line.startswith("Wrote")) == \
        sorted(line.replace("/local/", "/ray/") for line in local.splitlines() if line.startswith("Wrote"))
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names  # the record, no temporaries
    for name in names:
        if name.endswith(".png"):
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    record = read_record(tmp_path / "ray")
    assert sorted(record) == [f"p{i}.png" for i in range(5)]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*.png")}

    code, again = run("deblur-dir", src, "-o", tmp_path / "ray", "--weights", weights, *FAST, "--ray")
    assert code == 1 and _counts(again) == [0, 5, 0, 1], again
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*.png")} == stamps


def _descendants_titled(prefix: str) -> list[int]:
    """Processes below this one (the test's own Ray cluster) whose title starts with `prefix`."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, title in titles.items() if title.startswith(prefix) and ours(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes in /proc")
def test_a_worker_killed_mid_photo_leaves_every_photo_done_once(tmp_path: Path, weights: Path) -> None:
    src = _photos(tmp_path / "src", 8, side=160)
    code, local = run("deblur-dir", src, "-o", tmp_path / "local", "--weights", weights, *FAST)
    assert code == 0, local
    jobs = plan_directory(src, tmp_path / "ray")
    spec = WorkerSpec(Selection(path=weights), device="cpu", threads=1, amp="auto")
    killed: list[int] = []

    def kill_one_busy_worker(job: object) -> None:
        deadline = time.monotonic() + 5
        while not killed and time.monotonic() < deadline:
            busy = _descendants_titled("ray::PhotoWorker.deblur")
            if busy:
                os.kill(busy[0], signal.SIGKILL)  # mid-photo: its title names the method it is running
                killed.append(busy[0])
            else:
                time.sleep(0.01)

    report, _ = deblur_directory_on_ray(spec, jobs, DeblurSettings(tile=64, overlap=16), ClusterOptions(workers=2),
                                        on_written=kill_one_busy_worker)
    assert killed, "no worker was caught mid-photo"
    assert report.failed == [] and report.skipped == []
    assert report.processed == [job.source for job in jobs]  # each once, in plan order
    out = tmp_path / "ray"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    for job in jobs:
        assert job.target.read_bytes() == (tmp_path / "local" / job.target.name).read_bytes()
    lines = (out / ".msdn-outputs.jsonl").read_text().splitlines()
    assert len(lines) == len(jobs) and len(read_record(out)) == len(jobs)  # recorded once each, by the driver


def test_options_and_refusals(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert optional_ray_address(["d", "--ray"]) == ["d", "--ray="]
    assert optional_ray_address(["--ray", "photos", "-o", "x"]) == ["--ray=", "photos", "-o", "x"]
    assert optional_ray_address(["d", "--ray", "auto"]) == ["d", "--ray", "auto"]
    assert optional_ray_address(["d", "--ray", "ray://head:10001"]) == ["d", "--ray", "ray://head:10001"]
    assert optional_ray_address(["d", "--ray", "10.0.0.5:6379"]) == ["d", "--ray", "10.0.0.5:6379"]
    assert worker_count(ClusterOptions(), {"CPU": 8.0}) == 8
    assert worker_count(ClusterOptions(cpus_per_worker=3), {"CPU": 8.0}) == 2
    assert worker_count(ClusterOptions(gpus_per_worker=1), {"CPU": 8.0, "GPU": 2.0}) == 2
    src = _photos(tmp_path / "src", 1)
    code, out = run("deblur-dir", src, "-o", tmp_path / "o", "--weights", weights, *FAST, "--ray",
                    "--ray-gpus-per-worker", "1")
    assert code == 1 and out.strip() == "Error: --ray-gpus-per-worker 1: the Ray cluster has 0 GPU(s)", out
    code, out = run("deblur-dir", src, "-o", tmp_path / "o", "--weights", weights, "--ray-workers", "2")
    assert code == 1 and "need --ray" in out and len(out.strip().splitlines()) == 1, out
    code, out = run("deblur-dir", src, "-o", tmp_path / "o", "--weights", tmp_path / "none.safetensors", "--ray")
    assert code == 1 and out.startswith("Error: a Ray worker could not load the model: ") \
        and len(out.strip().splitlines()) == 1, out
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "deblur_cli.inference.ray_runner")
    code, out = run("deblur-dir", src, "-o", tmp_path / "o", "--weights", weights, "--ray")
    assert code == 1 and out.strip() == "Error: --ray needs Ray: pip install 'msdn-deblur[ray]'", out
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.png"))


@pytest.mark.slow  # a second driver process: about 15 s
def test_a_driver_killed_mid_run_leaves_complete_outputs_and_a_rerun_finishes(tmp_path: Path, weights: Path) -> None:
    import subprocess

    src = _photos(tmp_path / "src", 8, side=160)
    code, local = run("deblur-dir", src, "-o", tmp_path / "local", "--weights", weights, *FAST)
    assert code == 0, local
    out = tmp_path / "ray"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the module's cluster
    driver = subprocess.Popen([sys.executable, "-m", "deblur_cli", "deblur-dir", str(src), "-o", str(out),
                               "--weights", str(weights), *FAST, "--ray", "--ray-workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    assert driver.stdout is not None
    first = driver.stdout.readline()  # the first photo is written: the others are under way
    driver.kill()
    driver.wait()
    assert first.startswith("Wrote "), first
    deadline = time.monotonic() + 30
    while _descendants_titled("ray::PhotoWorker") and time.monotonic() < deadline:
        time.sleep(0.1)  # Ray ends the dead driver's workers
    done = sorted(p.name for p in out.glob("*.png"))
    assert 1 <= len(done) < 8
    for name in done:  # only complete outputs under the real names
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    code, again = run("deblur-dir", src, "-o", out, "--weights", weights, *FAST, "--ray")
    assert code == 0 and _counts(again) == [8 - len(done), len(done), 0, 0], again
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    for name in sorted(p.name for p in out.glob("*.png")):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
