"""The malloc tuning is applied once, where glibc is the C library, and changes no numbers."""

from __future__ import annotations

import platform

import pytest
import torch

from vaelab.allocator import retain_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retain_freed_memory_applies_once_on_glibc():
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # idempotent


def test_large_blocks_are_reused_with_the_same_values():
    retain_freed_memory()
    a = torch.arange(4_000_000, dtype=torch.float32)
    expected = a.sum().item()
    del a
    b = torch.arange(4_000_000, dtype=torch.float32)  # served from the retained block
    assert b.sum().item() == expected
