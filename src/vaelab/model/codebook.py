"""What a quantised code's usage says, for any family that chooses codes from a codebook (``code_usage``)."""

from __future__ import annotations

import torch


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(H(p)), p = counts / sum (K counts): K when every code is used equally, 1 when one code is."""
    p = counts.double() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-300))).sum()).float()


def usage_summary(counts: torch.Tensor) -> dict[str, float | int]:
    """The usage's perplexity, and how many of the K codes are chosen at all (number and fraction)."""
    used = int((counts > 0).sum())
    return {
        "code_perplexity": float(perplexity(counts)),
        "codes_used": used,
        "codebook_size": len(counts),
        "codes_used_fraction": used / len(counts),
    }
