"""`msdn` command line: builds the Typer app and registers one module per command family (commands/).

The commands parse options, call the library and draw output; no model logic lives here.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from deblur_cli import __version__
from deblur_cli.commands import weights
from deblur_cli.commands.common import console, fail, os_error_line  # noqa: F401  (tests narrow or widen console)
from deblur_cli.commands.deblur import RayAddressCommand, deblur_command, deblur_dir_command
from deblur_cli.commands.eval import eval_command
from deblur_cli.commands.train import train_command

class _Msdn(TyperGroup):
    """The command group, with one line for an OS error raised while the options are parsed (click's path
    checks stat a 300-byte name and raise ENAMETOOLONG before any command's own error handling runs)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            fail(os_error_line(exc))
            sys.exit(1)


app = typer.Typer(
    name="msdn",
    cls=_Msdn,
    help="Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msdn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN)."""


app.command("deblur")(deblur_command)
app.command("deblur-dir", cls=RayAddressCommand)(deblur_dir_command)
app.add_typer(weights.app, name="weights")
app.command("eval")(eval_command)
app.command("train")(train_command)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
