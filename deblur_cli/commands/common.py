"""What every command shares: the stderr console, one-line errors, and options declared once as data."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from deblur_cli.errors import MsdnError

console = Console(stderr=True)  # progress, warnings and errors; results go to stdout
F = TypeVar("F", bound=Callable[..., Any])


def _flag_metavar(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """No `<bool>` type column for flags (`--overwrite`, `--help`): they take no value."""
    return None if self.is_flag else _option_metavar(self, ctx)


_option_metavar = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_metavar  # type: ignore[method-assign]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (the message is plain text, never markup)."""
    console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    console.print(f"[yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A line of rich markup on stderr, never wrapped (paths stay whole)."""
    console.print(message, highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: temporary files are removed and the exit is clean."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


class StopRequest:
    """The first SIGTERM or Ctrl-C received, as a question the work asks at its safe points."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def ask(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one stops at once
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block the first SIGTERM or Ctrl-C only asks the work to stop at its next safe point;
    a second one stops at once, as outside the block."""
    request = StopRequest()
    previous = {sig: signal.signal(sig, request.ask) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error on a user's path, the path shortened to stay one line."""
    name = str(exc.filename) if exc.filename is not None else ""
    shown = name if len(name) <= 80 else f"{name[:40]}...{name[-36:]}"
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long ({len(os.path.basename(name).encode())} bytes; a name may have at most " \
               f"255): {shown}" if name else "file name too long (a name may have at most 255 bytes)"
    reason = exc.strerror or type(exc).__name__
    return f"{shown}: {reason}" if name else reason


def friendly_errors(func: F) -> F:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return func(*args, **kwargs)
        except MsdnError as exc:
            raise fail(str(exc)) from None
        except Terminated:
            raise fail("terminated", code=128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None
        except OSError as exc:  # what the user's paths can cause (a name over 255 bytes, a missing folder)
            raise fail(os_error_line(exc)) from None
        except MemoryError:
            raise fail("out of memory; use a smaller --tile or --batch-size, or a lower --max-pixels") from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def progress(*columns: Any, **options: Any) -> Any:
    """A rich Progress on stderr, drawn only on a terminal (in a pipe or log it would leave blank lines)."""
    from rich.progress import Progress

    return Progress(*columns, console=console, disable=not console.is_terminal, **options)


PLAIN_AFTER_S = 2.0  # without a terminal: a photo's first progress line once it has taken this long...
PLAIN_EVERY_S = 10.0  # ...then one at most this often, and one at the end


def plain_progress(label: str, clock: Callable[[], float] | None = None) -> Callable[[int, int], None]:
    """progress(done, total) as plain stderr lines where no bar is drawn (a log, a pipe): silent for a
    quick photo, so a short run's stderr stays empty, then `label: 6/24 tiles (25%)` now and then."""
    import time

    clock = clock or time.monotonic
    start, last = clock(), [None]

    def update(done: int, total: int) -> None:
        now = clock()
        if total <= 1 or now - start < PLAIN_AFTER_S:
            return
        if done < total and last[0] is not None and now - last[0] < PLAIN_EVERY_S:
            return
        if done == total and last[0] is None:
            return  # finished before its first line: the result line says the rest
        last[0] = now
        say(f"{escape(label)}: {done}/{total} tiles ({100 * done // total}%)")

    return update


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """One command-line parameter declared as data, so a set of options is written once and shared."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def gathered(extra: Sequence[inspect.Parameter], into: str) -> Callable[[F], F]:
    """Give a command the parameters `extra` in place of its parameter `into`, which receives them as
    one dict: Typer sees every option, the command body sees a single value."""

    def decorate(func: F) -> F:
        own = list(inspect.signature(func).parameters.values())
        at = [p.name for p in own].index(into)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + list(extra) + own[at + 1:]]
        names = {p.name for p in extra}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            packed = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return func(**kwargs, **{into: packed})

        hints = typing_hints(func)
        wrapper.__signature__ = inspect.Signature([p.replace(annotation=hints.get(p.name, p.annotation))
                                                   for p in params])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: hints.get(p.name, p.annotation) for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


def typing_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The function's annotations as types (they are strings under `from __future__ import annotations`)."""
    from typing import get_type_hints

    return get_type_hints(func)
