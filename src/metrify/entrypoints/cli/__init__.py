"""The `metrify` command. Errors reach the user as one readable line, never a traceback:
bad arguments and bad input exit 2; anything unexpected exits 1 and names the log file."""

from __future__ import annotations

import logging
import os
import sys

import click
import typer

from metrify.entrypoints.cli.app import app, state
from metrify.entrypoints.cli.errors import UserError
from metrify.settings import SettingsError, load_settings

log = logging.getLogger("metrify.cli")


def _click_modules() -> list[object]:
    """Typer from 0.2x vendors its own click; older ones use click itself. Catch both's errors."""
    modules: list[object] = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return [*modules, vendored]


_MODULES = _click_modules()
_USAGE_ERRORS = tuple(m.UsageError for m in _MODULES)  # type: ignore[attr-defined]
_CLICK_ERRORS = tuple(m.ClickException for m in _MODULES)  # type: ignore[attr-defined]
_EXITS = (typer.Exit, *(m.Exit for m in _MODULES if hasattr(m, "Exit")))  # type: ignore[attr-defined]
_ABORTS = (typer.Abort, *(m.Abort for m in _MODULES if hasattr(m, "Abort")))  # type: ignore[attr-defined]


def _fail(message: str, code: int) -> None:
    print(f"metrify: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--")] if "--" in args else args
    debug = "--debug" in options
    if debug:  # a global option, taken wherever it is typed (`metrify db upgrade --debug` too)
        args.remove("--debug")
        args.insert(0, "--debug")
    try:
        state.settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc), 2)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="metrify", standalone_mode=False)
    except _USAGE_ERRORS as exc:
        if type(exc).__name__.startswith("NoArgsIsHelp") and exc.ctx is not None:
            print(exc.ctx.get_help(), file=sys.stderr)  # a bare `metrify` (or group) shows its help
            raise SystemExit(2) from None
        _fail(exc.format_message().splitlines()[-1] if exc.format_message() else str(exc), 2)
    except _CLICK_ERRORS as exc:
        _fail(exc.format_message(), exc.exit_code)
    except _EXITS as exc:
        raise SystemExit(exc.exit_code) from None
    except _ABORTS:
        _fail("interrupted", 130)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:  # `metrify export ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as exc:  # the last line of defence: log it all, show one line
        log.exception("unexpected error", extra={"command": args[:1], "file_only": not debug})
        if debug:
            raise
        where = state.log_file or "the log"
        _fail(f"unexpected error: {type(exc).__name__}: {exc} (full details in {where}; rerun with --debug)", 1)
    finally:
        state.close()
    if isinstance(code, int) and code:
        raise SystemExit(code)
