"""Images in and out of the explorer: PNG as base64 text, uploaded PNGs checked before they are decoded,
and the MNIST layout for a digit drawn by hand (size-normalised into 20 x 20, centred by its centre of mass)."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image

from vaelab.errors import VaelabError

MAX_PNG_BYTES = 2 * 2**20  # an upload larger than this is refused before it is decoded
MAX_PNG_PIXELS = 4096 * 4096  # width x height read from the header, before the pixels are


def to_png(image: torch.Tensor) -> str:
    """A C x H x W image in [0, 1] (C = 1 or 3) as base64 PNG text."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    array = pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mosaic(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """rows*cols x C x H x W images (row-major) as one C x rows*H x cols*W image."""
    _, c, h, w = images.shape
    return images.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def from_png(text: str, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Base64 PNG (a ``data:`` URL prefix allowed) -> C x H x W in [0, 1], resized to ``image_shape``.

    Raises :class:`VaelabError` for text that is not base64, bytes that are not an image, or an image
    too large to decode. Transparent pixels count as black (a canvas drawn on nothing)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_PNG_BYTES * 4 // 3 + 4:
        raise VaelabError(f"the image is larger than {MAX_PNG_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VaelabError("image_png is not base64 text") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                raise VaelabError(f"image_png is a {img.format} image; send a PNG")
            if img.width * img.height > MAX_PNG_PIXELS:
                raise VaelabError(f"the image is {img.width} x {img.height} pixels; at most {MAX_PNG_PIXELS:,} pixels")
            channels = image_shape[0]
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                img = Image.alpha_composite(black, rgba)
            img = img.convert("L" if channels == 1 else "RGB")
            img = img.resize((image_shape[2], image_shape[1]), Image.Resampling.BOX)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except VaelabError:
        raise
    except Exception as err:  # Pillow's many error types for corrupt or unknown data
        raise VaelabError(f"image_png is not a readable PNG image ({type(err).__name__})") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def mnist_layout(image: torch.Tensor, box: int = 20) -> torch.Tensor:
    """A grey C x H x W digit placed as MNIST places its digits: the ink's bounding box scaled to fit
    ``box`` x ``box`` pixels (aspect kept), then shifted so that its centre of mass is the image centre.
    An image with no ink is returned as it is."""
    _, h, w = image.shape
    grey = image.mean(0)
    ink = grey > 0.05
    if not ink.any():
        return image
    rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
    crop = image[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = box / max(crop.shape[1], crop.shape[2])
    new_h, new_w = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[2] * scale))
    resized = torch.nn.functional.interpolate(
        crop.unsqueeze(0), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    mass = resized.mean(0)
    total = float(mass.sum())
    cy = float((mass.sum(1) * torch.arange(new_h)).sum()) / total
    cx = float((mass.sum(0) * torch.arange(new_w)).sum()) / total
    top = min(max(round((h - 1) / 2 - cy), 0), h - new_h)
    left = min(max(round((w - 1) / 2 - cx), 0), w - new_w)
    out = torch.zeros_like(image)
    out[:, top : top + new_h, left : left + new_w] = resized
    return out
