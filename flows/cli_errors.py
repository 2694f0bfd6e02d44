"""How every `stylematrix` command ends on an error a person can act on: one line, exit code 2."""

from __future__ import annotations

from collections.abc import Callable

import typer

from catalogs.uris import check_prefix
from tasks.values import first_line

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ConnectionError, PermissionError)


def fail(exc: BaseException) -> None:
    """One line a person can act on, instead of a traceback."""
    typer.echo(f"stylematrix: error: {first_line(exc)}", err=True)
    raise typer.Exit(code=2)


def _prefix(what: str) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_prefix(value, what)
        except ValueError as exc:
            fail(exc)
        return None

    return check


# Option callbacks for `--assets` and `--catalog`: a prefix with `.`, `..` or an empty segment is refused
# in one line before anything runs (catalogs/uris.py).
ASSETS_URI = _prefix("assets")
CATALOG_URI = _prefix("catalog")
