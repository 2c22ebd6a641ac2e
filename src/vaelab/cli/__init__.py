"""The ``vaelab`` command line.

Every user mistake surfaces as a :class:`~vaelab.errors.VaelabError`, printed as one line
``error: ...`` on stderr with exit code 2 and no traceback. Heavy imports happen inside commands
so that ``vaelab --help`` is instant.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from vaelab.cli.app import app
from vaelab.errors import VaelabError

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except VaelabError as err:
        _stderr.print(f"[bold red]error:[/] {escape(str(err))}", markup=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _stderr.print("interrupted; a run can be continued with `vaelab train --resume RUN_DIR`")
        sys.exit(130)


__all__ = ["app", "main"]
