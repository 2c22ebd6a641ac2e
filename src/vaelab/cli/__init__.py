"""The ``vaelab`` command line.

Every user mistake surfaces as a :class:`~vaelab.errors.VaelabError`, printed as one line
``error: ...`` on stderr with exit code 2 and no traceback; so do usage mistakes (an unknown option)
and a write the disk refuses (full, read-only, no permission). Ctrl-C prints one line and exits 130;
an interrupted ``vaelab train`` says how to resume. Heavy imports happen inside commands so that
``vaelab --help`` is instant.
"""

from __future__ import annotations

import sys
import threading

import typer
from rich.console import Console
from rich.markup import escape

from vaelab.cli.app import Interrupted, app
from vaelab.errors import VaelabError
from vaelab.io import REASONS, os_errno, reason

try:
    from typer import TyperException as CommandLineError  # typer's own copy of click's ClickException
except ImportError:  # older typer: click's
    from click import ClickException as CommandLineError

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _error(message: str) -> None:
    one_line = " ".join(message.split("\n"))  # a name the user typed may hold a newline
    _stderr.print(f"[bold red]error:[/] {escape(one_line)}", markup=True)
    sys.exit(2)


def _interrupted(message: str = "interrupted") -> None:
    _stderr.print(message, markup=False)
    sys.exit(INTERRUPTED)


def _quiet_disk_errors(args: threading.ExceptHookArgs, default=threading.excepthook) -> None:
    # a background writer (TensorBoard's) that hits a full disk: the main thread reports it at its next write
    if os_errno(args.exc_value) in REASONS:
        return
    default(args)


def main() -> None:
    threading.excepthook = _quiet_disk_errors
    try:
        code = app(standalone_mode=False)  # errors come here instead of being printed by click
    except VaelabError as err:
        _error(str(err))
    except Interrupted as err:
        _interrupted(str(err))
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except CommandLineError as err:  # a usage mistake: an unknown option, a missing or bad value
        message = err.format_message()
        if "\n" in message:  # the help text itself (no arguments at all)
            err.show()
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        _error(f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message)
    except OSError as err:  # a write outside vaelab's own (atomic) ones
        if os_errno(err) not in REASONS:
            raise
        _error(f"{err.filename}: {reason(err)}" if err.filename else reason(err))
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code, silently
        _interrupted()
    sys.exit(code or 0)


__all__ = ["app", "main"]
