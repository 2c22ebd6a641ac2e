"""The precision policy: which dtype the networks compute in, asked of the CPU probe first."""

from __future__ import annotations

import torch

from vaelab.core.platform import cpu_capabilities, require_native_bf16

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def network_dtype(precision: str, device_type: str = "cpu") -> torch.dtype | None:
    """The autocast dtype of the networks (None: fp32). bf16 on a CPU that would emulate it is refused."""
    if precision == "bf16" and device_type == "cpu":
        require_native_bf16("train.precision = bf16")
    return PRECISIONS[precision]


def fastest_precision(preferred: str) -> tuple[str, str | None]:
    """``preferred`` if this CPU runs it natively, else fp32 and a one-line notice saying why."""
    cpu = cpu_capabilities()
    if preferred == "bf16" and not cpu.native_bf16:
        return "fp32", f"this recipe trains in bf16 for speed, but {cpu.why_no_bf16()}: training in fp32 instead"
    return preferred, None
