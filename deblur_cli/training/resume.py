"""What `msdn train --resume RUN` trains with: the run's stored settings, and the flags given again.

A run keeps everything its first invocation was given (the checkpoint stores the whole
TrainConfig), so a resumed run exports where it was told to, checkpoints and validates as often,
after a kill as before. A flag given again on resume either overrides the stored value, with a
notice the CLI prints, or is refused in one line; it is never silently ignored:

- overridable: where things are (`--data`, `--val-data`, `--vgg-weights`, `--export`, the run
  folder), how the run executes (`--device`, `--workers`, `--amp`, ...), how often it checkpoints
  and validates, and its length (`--steps`, `--epochs`: the schedule is stretched);
- per invocation: `--max-minutes` and `--threads` are never inherited (a time budget or a core
  count belongs to one session);
- everything else changes what the run computes (losses, learning rate, crops, blur, seed, the
  network): a different value is refused, the same value is fine.

Input and export paths are stored absolute, so a run resumed from another directory finds its
photos; `--data` on resume re-points a run at the same photos in a new place (another checkout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from deblur_cli.nets.architectures import arch_of
from deblur_cli.errors import MsdnError

PER_INVOCATION = ("max_minutes", "threads")
PATHS = ("data", "val_data", "val_real", "vgg_weights", "export")  # stored absolute
OVERRIDABLE = (*PATHS, "checkpoint_dir", "checkpoint_every", "val_every", "steps", "epochs", "device", "workers",
               "render_workers", "compile", "amp", "channels_last", "skip_bad")
LOCATIONS = (*PATHS, "checkpoint_dir")  # compared as the files they name
FLAG_NAMES = {"pyramid": "--no-pyramid", "compile": "--compile"}


@dataclass(frozen=True)
class Resumed:
    """The settings a resumed run trains with, and one notice per stored value a flag replaced."""

    config: Any  # train.TrainConfig (not imported: train.py imports this module)
    model_config: Any  # model.MSDNConfig
    notices: tuple[str, ...]


def flag(name: str) -> str:
    """The CLI flag of a config field (`val_every` -> `--val-every`)."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def show(value: Any) -> str:
    """A stored value as the user would type it (`(2.0, 60.0)` -> `2,60`)."""
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "(none)" if value is None else str(value)


def absolute(value: str | None) -> str | None:
    """A path stored so that it means the same file from any working directory."""
    return str(Path(value).expanduser().resolve()) if value else value


def with_absolute_paths(config: Any) -> Any:
    """`config` with its input and export paths made absolute."""
    return replace(config, **{name: absolute(getattr(config, name)) for name in PATHS})


def _same(name: str, stored: Any, given: Any) -> bool:
    if name in LOCATIONS and stored and given:  # a legacy relative path means the same file from here
        return absolute(stored) == absolute(given)
    if isinstance(stored, (tuple, list)) and isinstance(given, (tuple, list)):
        return tuple(stored) == tuple(given)
    return bool(stored == given)


def merge(stored: Any, given: Mapping[str, Any], *, stored_model: Any = None,
          given_model: Mapping[str, Any] | None = None, recipe: tuple[str, Mapping[str, Any]] | None = None,
          step: int = 0, run_dir: Path | None = None) -> Resumed:
    """The stored settings with the flags given again on resume applied (see the module docstring).

    `given` holds only the options the user actually passed. `run_dir` is where the run was found:
    the run continues there unless `--checkpoint-dir` says otherwise (a stored folder may be from
    another machine). `recipe` (name, settings) is a `--recipe` given again: it must be the run's.
    `step` is the run's: a shorter `--steps` than it is refused.
    """
    if recipe is not None:
        name, settings = recipe
        changed = [k for k, v in settings.items() if k not in given and not _same(k, getattr(stored, k), v)]
        if changed:
            raise MsdnError(f"--recipe {name} would change what the run computes ({flag(changed[0])} "
                            f"{show(settings[changed[0]])}, the run's {show(getattr(stored, changed[0]))}); "
                            "start a new run with --checkpoint-dir instead of --resume")
    notices: list[str] = []
    values: dict[str, Any] = {name: None for name in PER_INVOCATION}
    if run_dir is not None:
        values["checkpoint_dir"] = str(run_dir)
    known = {f.name for f in fields(stored)}
    for name, value in given.items():
        if name not in known:
            raise MsdnError(f"unknown training option {name!r}")
        if name in PATHS:
            value = absolute(value)
        if name in PER_INVOCATION:
            values[name] = value
            continue
        base = values.get(name, getattr(stored, name))
        if _same(name, base, value):
            continue
        if name not in OVERRIDABLE:
            raise MsdnError(f"{flag(name)} {show(value)} would change what the run computes (it was trained with "
                            f"{show(base)}); start a new run with --checkpoint-dir instead of --resume")
        values[name] = value
        notices.append(f"{flag(name)} {show(value)} overrides the run's {show(base)}")
    for name, value in (given_model or {}).items():
        if stored_model is not None and name == "arch" and arch_of(stored_model) != value:
            raise MsdnError(f"--arch cannot change on --resume (the run's network is {arch_of(stored_model)})")
        if stored_model is not None and name != "arch" and not hasattr(stored_model, name):
            raise MsdnError(f"{flag(name)} does not apply to the run's {arch_of(stored_model)} network")
        if stored_model is not None and name != "arch" and not _same(name, getattr(stored_model, name), value):
            raise MsdnError(f"{flag(name)} cannot change on --resume (the run's network has "
                            f"{name.replace('_', ' ')} {show(getattr(stored_model, name))})")
    config = replace(stored, **values)
    if "epochs" in given and config.steps is not None and not _same("epochs", stored.epochs, given["epochs"]):
        raise MsdnError(f"--epochs has no effect on a run of --steps {config.steps}: extend it with --steps")
    if config.steps is not None and config.steps < step:
        raise MsdnError(f"--steps {config.steps} is shorter than the run, which is at step {step}")
    return Resumed(config, stored_model, tuple(notices))
