"""One module per `msdn` command family; `deblur_cli.cli` registers them on the Typer app."""
