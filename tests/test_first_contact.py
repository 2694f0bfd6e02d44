"""First contact: every `--help`, the terminal progress bar, campaign titles, CJK text on sheets and the gallery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner


def _commands(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and group of the tree, with the arguments that reach it, found through click's group API.

    typer 0.29 carries its own copy of click (`typer._click`), so groups are told by their API, not by class.
    """
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


def test_every_command_help_exits_0_and_shows_its_options_with_defaults():
    from flows.cli import app

    tree = list(_commands(typer.main.get_command(app)))
    names = {" ".join(path) for path, _ in tree}
    assert {"run", "demo", "seed", "serve", "catalog import", "catalog refresh", "catalog ls"} <= names
    runner = CliRunner()
    for path, command in tree:
        result = runner.invoke(app, [*path, "--help"], prog_name="stylematrix")
        where = f"stylematrix {' '.join(path)} --help"
        assert result.exit_code == 0, f"{where}: exit {result.exit_code}\n{result.output}{result.exception!r}"
        assert "Usage: stylematrix" in result.output, where
        for param in command.params:
            if param.param_type_name == "option":
                assert max(param.opts, key=len) in result.output, f"{where} does not show {param.opts}"
                if param.show_default and param.default is not None and not param.is_flag:
                    assert f"[default: {param.default}" in " ".join(result.output.split()), \
                        f"{where} does not show the default of {param.opts}"
            else:
                assert (param.metavar or param.name).upper() in result.output.upper(), f"{where}: {param.name}"
