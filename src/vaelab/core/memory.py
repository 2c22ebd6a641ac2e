"""Sizes a user's file or config asks for, checked against the memory free now, before allocating."""

from __future__ import annotations

import psutil

from vaelab.errors import VaelabError


def size_text(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit it fills, up to EiB."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min((max(nbytes, 1).bit_length() - 1) // 10, len(units) - 1)
    if power == 0:
        return f"{nbytes:,} bytes"
    tenths = nbytes * 10 // 1024**power  # in integers: a size declared by a file can exceed any float
    return f"{tenths // 10:,}.{tenths % 10} {units[power]}"


def require_memory(nbytes: int, what: str, advice: str = "") -> None:
    """Refuse ``what`` (a phrase such as "data/x.gz (an IDX file of shape ...)") if it needs more than
    the memory available now; ``advice`` says what to change."""
    available = psutil.virtual_memory().available
    if nbytes > available:
        raise VaelabError(
            f"{what} would need about {size_text(nbytes)} of memory; only {size_text(available)} is available"
            + (f"; {advice}" if advice else "")
        )
