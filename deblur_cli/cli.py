"""`msdn` command line: parses options, calls the library, draws output. No model logic here."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from deblur_cli import __version__
from deblur_cli.errors import MsdnError

app = typer.Typer(
    name="msdn",
    help="Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
weights_app = typer.Typer(help="List, fetch, verify, export and publish generator weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(func: F) -> F:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MsdnError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msdn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN)."""


# Commands are defined below, one section per concern (deblur, weights, eval, train).


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
