"""Image loading into the reference's uint8 (3, H, W) RGB tensor, with clear errors on bad input.

RGBA (and LA / palette with transparency) is composited over white using alpha as the paste mask, grey and
palette images are converted to RGB, and EXIF orientation is applied first.

Eagle2-9B's processor works on the PIL image as loaded instead (``load_pil`` + ``tile_pil``): PIL's own
resize (bicubic; nearest for palette and 1-bit images; RGBA premultiplied), tiles cropped row-major, then
each tile ``convert("RGB")`` (alpha dropped) and normalised as torchvision's ToTensor + Normalize.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]

# Refuse decompression bombs long before they reach the tiler (PIL's own guard warns at ~89 MP).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message names the input and the problem."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (a likely decompression bomb); refused from its header, before decoding."""


EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees: width and height swap


@dataclass(frozen=True)
class ImageHeader:
    width: int  # as the decoded image will be, EXIF rotation applied
    height: int
    format: str


def read_image_header(source: str | Path | bytes | io.IOBase, *, name: str,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Format and size of an image from its header alone (nothing is decoded), with the pixel limit checked.

    The one header reader: training's dataset scan, the serving front's checks and ``load_image`` use it."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{name}: empty image (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) and not Path(source).exists():
        raise ImageError(f"{name}: file not found: {source}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                fmt = img.format or "unknown"
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (PIL cannot identify the format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{name}: image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or truncated image header ({e})") from e
    return _checked_header(width, height, orientation, fmt, name, max_pixels)


def _checked_header(width: int, height: int, orientation: int, fmt: str, name: str,
                    max_pixels: int | None) -> ImageHeader:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                            "pixels (decompression bomb?)")
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width, height, fmt)


def _open(source: ImageInput, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        s = str(source)
        if s.startswith("data:"):
            return _open(decode_data_url(s), name)
        path = Path(s)
        if not path.exists():
            raise ImageError(f"{name}: file not found: {path}")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise ImageError(f"{name}: unsupported image type {type(source).__name__}")
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (PIL cannot identify the format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is corrupt or truncated ({e})") from e
    return img


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise ImageError("malformed data URL (expected data:<mime>;base64,<payload>)")
    if ";base64" not in head:
        raise ImageError("data URL must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (ValueError, base64.binascii.Error) as e:
        raise ImageError(f"data URL has invalid base64: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as the reference makes it: alpha composited over white, everything else converted."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(
    source: ImageInput, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Any supported image input -> uint8 (3, H, W) RGB tensor."""
    name = name or (str(source) if isinstance(source, (str, Path)) and not str(source).startswith("data:") else "image")
    if isinstance(source, torch.Tensor):
        return _check_tensor(source, name)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
            return load_image(Image.fromarray(arr), name=name, max_pixels=max_pixels)
        return _check_tensor(torch.from_numpy(np.ascontiguousarray(arr)), name)
    img = _open(source, name)
    _checked_header(img.width, img.height, 1, img.format or "unknown", name, max_pixels)
    try:
        img = ImageOps.exif_transpose(img) or img
        rgb = to_rgb(img)
        arr = np.array(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is corrupt or truncated ({e})") from e
    # (H, W, 3) -> (3, H, W) as a channels-last view: torch's uint8 antialiased resize is fastest on it
    return torch.from_numpy(arr).permute(2, 0, 1)


def _check_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[0] != 3:
        raise ImageError(f"{name}: tensor images must be uint8 (3, H, W) RGB, got {tuple(t.shape)} {t.dtype}")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ImageError(f"{name}: image has no pixels ({t.shape[2]}x{t.shape[1]})")
    return t



# --------------------------------------------------------------------------------- Eagle2-9B (PIL) path
def load_pil(source: ImageInput, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             alpha: str = "drop") -> Image.Image:
    """Any supported image input as a PIL image, as loaded (no EXIF rotation, no mode change).

    ``alpha="white"`` composites transparent images over white first; ``"drop"`` (Eagle2-9B) keeps them as
    they are, so each tile's ``convert("RGB")`` drops the alpha channel.
    """
    name = name or (str(source) if isinstance(source, (str, Path)) and not str(source).startswith("data:") else "image")
    if isinstance(source, torch.Tensor):
        img = Image.fromarray(_check_tensor(source, name).permute(1, 2, 0).contiguous().numpy())
    elif isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[-1] not in (3, 4))
        ):
            raise ImageError(f"{name}: array images must be uint8 (H, W), (H, W, 3) or (H, W, 4), "
                             f"got {source.shape} {source.dtype}")
        img = Image.fromarray(np.ascontiguousarray(source))
    else:
        img = _open(source, name)
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: image data is corrupt or truncated ({e})") from e
    return to_rgb(img) if alpha == "white" else img


def tile_pil(img: Image.Image, grid: tuple[int, int], tile_size: int = 448, use_thumbnail: bool = True) -> torch.Tensor:
    """PIL image -> uint8 (num_tiles, 3, S, S): PIL resize to the grid, row-major crops, thumbnail last, RGB
    per tile."""
    cols, rows = grid
    s = tile_size
    resized = img.resize((cols * s, rows * s))
    crops = [resized.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
    if use_thumbnail and cols * rows != 1:
        crops.append(img.resize((s, s)))
    arrays = [np.asarray(t.convert("RGB"), dtype=np.uint8) for t in crops]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalize_pil(tiles: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 tiles -> float32 ``(x / 255 - mean) / std`` in torchvision's operation order (ToTensor, Normalize)."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (tiles.float() / 255).sub_(m).div_(sd)
