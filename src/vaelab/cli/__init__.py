"""The ``vaelab`` command line.

Every user mistake surfaces as a :class:`~vaelab.errors.VaelabError`, printed as one line
``error: ...`` on stderr with exit code 2 and no traceback; so do usage mistakes (an unknown option)
and a write the disk refuses (full, read-only, no permission). Ctrl-C prints one line and exits 130;
SIGTERM unwinds the same way (locks released, a run folder with nothing to resume removed), prints one
line and exits 143; an interrupted ``vaelab train`` says how to resume. A reader that goes away
(``vaelab list | head -1``) ends the command quietly with 141, as SIGPIPE ends other programs. Heavy
imports happen inside commands so that ``vaelab --help`` is instant.
"""

from __future__ import annotations

import os
import signal
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
BROKEN_PIPE = 141  # ... by SIGPIPE
TERMINATED = 143  # ... by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program stands so that it unwinds as on Ctrl-C."""


_terminated = False  # whether the interruption being handled came from SIGTERM


def _error(message: str) -> None:
    one_line = " ".join(message.split("\n"))  # a name the user typed may hold a newline
    _stderr.print(f"[bold red]error:[/] {escape(one_line)}", markup=True)
    sys.exit(2)


def _interrupted(message: str = "interrupted") -> None:
    if _terminated:  # click turns a KeyboardInterrupt into Abort, so the flag, not the type, says which
        message = "terminated (SIGTERM)" + message.removeprefix("interrupted")
    _stderr.print(message, markup=False)
    sys.exit(TERMINATED if _terminated else INTERRUPTED)


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def _broken_pipe() -> None:
    try:  # Python's flush of stdout at exit would fail again and print noise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (captured)
        pass
    sys.exit(BROKEN_PIPE)


def _quiet_disk_errors(args: threading.ExceptHookArgs, default=threading.excepthook) -> None:
    # a background writer (TensorBoard's) that hits a full disk: the main thread reports it at its next write
    if os_errno(args.exc_value) in REASONS:
        return
    default(args)


def main() -> None:
    global _terminated
    _terminated = False
    threading.excepthook = _quiet_disk_errors
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        _run()
    except BrokenPipeError:  # the reader of stdout went away (`vaelab list | head -1`)
        _broken_pipe()
    except SystemExit as done:
        if isinstance(done.__context__, BrokenPipeError):  # click's and rich's own handling: exit 1
            _broken_pipe()
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run() -> None:
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
        if "\n" in message or not message.strip():  # the help text itself (rich prints it and leaves "")
            if message.strip():
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
    sys.stdout.flush()  # a broken pipe shows here, not in Python's own flush at exit
    sys.exit(code or 0)


__all__ = ["app", "main"]
