"""Sizes a user's file or config asks for, checked against the memory free now, before allocating."""

from __future__ import annotations

import psutil

from vaelab.errors import VaelabError


def gib(nbytes: int) -> str:
    tenths = nbytes * 10 // 2**30  # in integers: a size declared by a file can exceed any float
    return f"{tenths // 10:,}.{tenths % 10} GiB"


def require_memory(nbytes: int, what: str) -> None:
    """Refuse ``what`` (a phrase such as "the images of data/x.gz") if it needs more than the memory available."""
    available = psutil.virtual_memory().available
    if nbytes > available:
        raise VaelabError(f"{what} would need about {gib(nbytes)} of memory; only {gib(available)} is available")
