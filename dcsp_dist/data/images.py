"""Photos as people have them: one reader for ``data_tools.build``, ``data_tools.saliency``
and ``predict --images``, and the folder lister the last two share.

One rule everywhere: an image that cannot be used raises ``BadImage`` with one line naming
the file and the reason, and the caller goes on with the rest. What the reader does:

- **EXIF orientation** is applied (``ImageOps.exif_transpose``), so a phone photo's mask
  has the orientation every image viewer shows;
- **16-bit** greyscale (``I;16``, ``I``) is scaled to 8 bits by its type's range (65535),
  not clipped; 32-bit float (``F``) is taken as 0..1 when its values are, else 0..255;
- **CMYK**, **grey** and **palette** images become RGB; transparency (``RGBA``, ``LA``,
  a palette's transparent index) is composited over white, as viewers show it;
- **huge** images over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
  about 179 megapixels at twice the limit) are refused by name, not aborting the run.

This module imports NumPy and PIL only: it runs in build's and saliency's worker processes.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from dcsp_dist.core.errors import UserError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 95             # a record's re-encoded JPEG (only for images that are not plain JPEGs), 4:4:4
_ORIENTATION = 0x0112          # EXIF tag


class BadImage(UserError):
    """An image that cannot be used: one line, ``<path>: <reason>``."""


def _open(path: str, data: bytes | None = None):
    """The opened image (lazy), with every failure to open as BadImage."""
    if data is None and not os.path.isfile(path):
        raise BadImage(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data) if data is not None else path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{path}: too large to decode safely ({first_line(exc)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImage(f"{path}: not a readable image ({first_line(exc)})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3] RGB, by the rules in the module's docstring."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or grey.max() > 255 else 255.0
        grey = np.clip(np.round(grey * 255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        scale = 255.0 if grey.size and np.nanmax(grey) <= 1.0 else 1.0
        grey = np.clip(np.round(np.nan_to_num(grey) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "P" and "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_rgb(path: str, data: bytes | None = None) -> np.ndarray:
    """The image at ``path`` (or its bytes ``data``) as uint8 [H, W, 3] RGB, upright; BadImage
    naming ``path`` when it cannot be used."""
    with _open(path, data) as im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()                                   # raises on truncated data
                upright = ImageOps.exif_transpose(im)
                return _to_rgb(upright)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"{path}: too large to decode safely ({first_line(exc)})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise BadImage(f"{path}: not a readable image ({first_line(exc)})") from None


def upright_size(path: str) -> tuple[int, int]:
    """(width, height) of the image at ``path`` as ``read_rgb`` returns it (EXIF orientations
    5-8 turn it a quarter), from its header; BadImage when it cannot be opened."""
    with _open(path) as im:
        try:
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
        except (OSError, ValueError, SyntaxError, EOFError):
            turned = False
        return (im.height, im.width) if turned else (im.width, im.height)


def record_jpeg(path: str) -> tuple[bytes, int, int]:
    """``(jpeg bytes, height, width)`` for a record: a plain upright RGB or grey JPEG keeps its
    bytes as they are; anything else (EXIF-rotated, CMYK, PNG, 16-bit, transparent) is read
    by ``read_rgb`` and stored as a JPEG of quality 95. BadImage naming ``path`` otherwise."""
    if not os.path.isfile(path):
        raise BadImage(f"{path}: no such file")
    with open(path, "rb") as fh:
        data = fh.read()
    with _open(path, data) as im:
        plain = im.format == "JPEG" and im.mode in ("RGB", "L") and im.getexif().get(_ORIENTATION, 1) == 1
    rgb = read_rgb(path, data)                              # decodes fully: truncated data is found here
    if plain:
        return data, rgb.shape[0], rgb.shape[1]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)   # 4:4:4: colours kept
    return buf.getvalue(), rgb.shape[0], rgb.shape[1]


def list_images(images: str, list_file: str | None) -> list[tuple[str, str]]:
    """(stem, path) of every image of a folder (or of ``list_file``'s paths, relative to it),
    in order; ValueError naming the flag when unusable, when a listed file is missing or when
    two files share a stem (both would write ``<stem>.png``). Used by ``predict --images``
    and ``data_tools.saliency --images``."""
    if not os.path.isdir(images):
        raise UserError(f"--images {images}: no such directory")
    if list_file:
        if not os.path.isfile(list_file):
            raise UserError(f"--list {list_file}: no such file")
        with open(list_file) as fh:
            names = [line.split("\t")[0].strip() for line in fh if line.strip() and not line.startswith("#")]
        missing = [n for n in names if not os.path.isfile(os.path.join(images, n))]
        if missing:
            raise UserError(f"--list {list_file}: {len(missing)} image(s) not found under {images}, "
                             f"e.g. {missing[0]}")
    else:
        names = sorted(n for n in os.listdir(images) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise UserError(f"--images {images}: no .jpg, .jpeg or .png files{' listed' if list_file else ' there'}")
    stems: dict[str, str] = {}
    for name in names:
        stem = os.path.splitext(os.path.basename(name))[0]
        if stem in stems:
            raise UserError(f"--images {images}: {stems[stem]} and {name} would both write {stem}.png")
        stems[stem] = name
    return [(stem, os.path.join(images, name)) for stem, name in stems.items()]
