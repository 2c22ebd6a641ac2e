"""What this CPU can do natively: the one probe every precision and kernel choice asks.

bf16 is native where oneDNN has a bf16 path (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX); elsewhere
PyTorch emulates it some 50x slower than fp32 and oneDNN's fused bf16 kernels refuse to run.
``VAELAB_NO_NATIVE_BF16=1`` makes vaelab believe bf16 is absent, so the fallback paths can be
tested on any machine.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import dataclass

import torch

from vaelab.errors import VaelabError

NO_NATIVE_BF16 = "VAELAB_NO_NATIVE_BF16"
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx_ne_convert", "amx_bf16")


@dataclass(frozen=True)
class CpuCapabilities:
    model: str
    flags: frozenset[str]  # the matrix-relevant /proc/cpuinfo flags this CPU has
    native_bf16: bool  # oneDNN computes bf16 products and convolutions in hardware
    bf16_hidden: bool = False  # VAELAB_NO_NATIVE_BF16 is set: bf16 counts as absent whatever the CPU

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags and self.native_bf16

    @property
    def extensions(self) -> list[str]:
        return [f for f in _REPORTED_FLAGS if f in self.flags]

    @property
    def key(self) -> str:
        """Names this CPU (model, extensions, torch version) for caches of per-machine measurements."""
        text = f"{self.model}|{','.join(self.extensions)}|{self.native_bf16}|{torch.__version__}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def why_no_bf16(self) -> str:
        if self.bf16_hidden:
            return f"native bf16 is switched off by {NO_NATIVE_BF16}=1"
        return (
            f"this CPU ({self.model}, {' '.join(self.extensions) or 'no AVX2'}) has no native bf16 for oneDNN "
            "(it needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX), so bf16 would be emulated, far slower than fp32"
        )


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """This machine's CPU, probed once per process."""
    model, flags = _cpuinfo()
    native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    hidden = os.environ.get(NO_NATIVE_BF16, "").strip() not in ("", "0")
    return CpuCapabilities(model, frozenset(flags & set(_REPORTED_FLAGS)), native and not hidden, hidden)


def require_native_bf16(what: str = "--precision bf16") -> None:
    """Refuse bf16 on a CPU that would emulate it: one clear error, before any work starts."""
    cpu = cpu_capabilities()
    if not cpu.native_bf16:
        raise VaelabError(f"{what}: {cpu.why_no_bf16()}; use fp32 (--precision fp32)")
