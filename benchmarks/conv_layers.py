"""Time each layer of the study's conv VAE alone (batch 128, channels-last, torch's oneDNN kernels),
forward and forward + backward, as GFLOP/s beside the matrix-multiply peak.

It says which layers hold the conv model below the peak in `vaelab bench`: measured 2026-11-23, the
three wide layers run near the fp32 peak (enc2 165, dec1 186, dec2 163 GFLOP/s forward + backward,
peak 193), while the 32 -> 1 output layer takes 5.7 ms of a 40.6 ms step (30 GFLOP/s) for 1% of
the FLOPs; the five layers add up to 34.9 ms, against 26.7 ms for the model's FLOPs at the peak. GEMM-based rewrites of the layers (sub-pixel transposed
convolution, im2col, a 9-column GEMM plus shifted adds for the output layer) were measured slower
than oneDNN here in fp32 and were not adopted.

    python benchmarks/conv_layers.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from vaelab.allocator import retain_freed_memory
from vaelab.bench.suite import matmul_peak
from vaelab.core.platform import cpu_capabilities

BATCH = 128
# name, kind, in channels, out channels, input size (the study's network, 28 x 28 MNIST)
LAYERS = [
    ("enc1 conv 1->32 s2", "conv", 1, 32, 28),
    ("enc2 conv 32->64 s2", "conv", 32, 64, 14),
    ("dec1 convT 64->64 s2", "convt", 64, 64, 7),
    ("dec2 convT 64->32 s2", "convt", 64, 32, 14),
    ("dec3 convT 32->1 s1", "convt1", 32, 1, 28),
]


def best_ms(f, repeats: int = 30) -> float:
    for _ in range(5):
        f()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            f()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e3


def main() -> None:
    retain_freed_memory()
    cl = torch.channels_last
    cpu = cpu_capabilities()
    if not cpu.native_bf16:
        print(f"bf16 skipped: {cpu.why_no_bf16()}")
    for dtype in (torch.float32, torch.bfloat16) if cpu.native_bf16 else (torch.float32,):
        print(f"\n{dtype}: matrix-multiply peak {matmul_peak(dtype).gflops:.0f} GFLOP/s\n")
        print("| layer | forward ms | GFLOP/s | forward + backward ms | GFLOP/s |")
        print("|---|---|---|---|---|")
        for name, kind, cin, cout, size in LAYERS:
            first = name.startswith("enc1")  # its input is the data: no input gradient
            x = torch.randn(BATCH, cin, size, size).contiguous(memory_format=cl).to(dtype).requires_grad_(not first)
            if kind == "conv":
                w = torch.randn(cout, cin, 3, 3, dtype=dtype).contiguous(memory_format=cl).requires_grad_()
                forward = lambda x=x, w=w: F.conv2d(x, w, None, 2, 1)  # noqa: E731
                flops = 2 * cin * 9 * cout * (size // 2) ** 2 * BATCH
            else:
                w = torch.randn(cin, cout, 3, 3, dtype=dtype).contiguous(memory_format=cl).requires_grad_()
                stride, extra = (2, 1) if kind == "convt" else (1, 0)
                forward = lambda x=x, w=w, s=stride, e=extra: F.conv_transpose2d(x, w, None, s, 1, e)  # noqa: E731
                flops = 2 * cin * 9 * cout * size * size * BATCH
            grad = torch.randn_like(forward())
            wrt = (w,) if first else (x, w)
            t_forward = best_ms(forward)
            t_both = best_ms(lambda forward=forward, grad=grad, wrt=wrt: torch.autograd.grad(forward(), wrt, grad))
            both_flops = flops * (2 if first else 3)
            print(
                f"| {name} | {t_forward:.2f} | {flops / t_forward / 1e6:.0f} | {t_both:.2f} | {both_flops / t_both / 1e6:.0f} |"
            )


if __name__ == "__main__":
    main()
