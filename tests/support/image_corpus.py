"""Photos as phones and scanners make them, and broken ones: a corpus the tests write with
PIL, each with what the shared reader (dcsp_dist.data.images) must give, computed with NumPy."""
from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

GOOD = ("phone rotated.jpg", "scan16.png", "cmyk.jpg", "grey.png", "palette alpha.png", "naïve café.png")
BAD = {"truncated.jpg": "not a readable image", "empty.jpg": "not a readable image", "bomb.png": "too large"}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and an empty IDAT: enough for Pillow to read the size."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", b"") + _chunk(b"IEND", b""))


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: gradients and a block, no pixel noise (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // (h + w)], -1)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y:y + h // 3, x:x + w // 3] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


def write(folder) -> dict:
    """Write the corpus into ``folder``; returns {file name: expected upright RGB uint8} for
    the good ones (JPEG entries: what PIL decodes, then NumPy's rotation / conversion)."""
    expected = {}
    raw = np.zeros((24, 40, 3), np.uint8)
    raw[:, :20] = (220, 30, 30)                                     # left half red as stored
    raw[:, 20:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6                                                # "rotate 90 CW to view"
    Image.fromarray(raw).save(folder / "phone rotated.jpg", quality=95, exif=exif)
    stored = np.asarray(Image.open(folder / "phone rotated.jpg").convert("RGB"))
    expected["phone rotated.jpg"] = np.rot90(stored, k=-1)          # 40 high, 24 wide: red on top
    grey16 = (np.arange(30 * 50, dtype=np.uint32).reshape(30, 50) * 43).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "scan16.png")
    assert Image.open(folder / "scan16.png").mode.startswith("I")
    g8 = np.round(grey16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    expected["scan16.png"] = np.repeat(g8[..., None], 3, -1)
    cmyk = Image.fromarray(_smooth(20, 30, 1)).convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB"))
    grey = _smooth(16, 18, 2)[..., 0]
    Image.fromarray(grey, mode="L").save(folder / "grey.png")
    expected["grey.png"] = np.repeat(grey[..., None], 3, -1)
    index = np.zeros((12, 14), np.uint8)
    index[3:9, 4:10] = 1
    pal = Image.fromarray(index, mode="P")
    pal.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    pal.save(folder / "palette alpha.png", transparency=0)          # index 0 transparent
    want = np.full((12, 14, 3), 255, np.uint8)                      # over white
    want[3:9, 4:10] = (200, 40, 40)
    expected["palette alpha.png"] = want
    plain = _smooth(22, 26, 3)
    Image.fromarray(plain).save(folder / "naïve café.png")
    expected["naïve café.png"] = plain
    whole = (folder / "phone rotated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "bomb.png").write_bytes(_png_header(13400, 13400))   # 179.6 MP: just over twice Pillow's limit
    return expected
