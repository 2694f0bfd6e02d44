"""How every `stylematrix` command ends on an error a person can act on: one line, exit code 2."""

from __future__ import annotations

import typer

from tasks.values import first_line

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ConnectionError, PermissionError)


def fail(exc: BaseException) -> None:
    """One line a person can act on, instead of a traceback."""
    typer.echo(f"stylematrix: error: {first_line(exc)}", err=True)
    raise typer.Exit(code=2)
