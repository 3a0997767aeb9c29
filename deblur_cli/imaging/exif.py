"""Which way up a photo is, and the EXIF to write back once its pixels are upright.

Cameras store pixels as the sensor saw them and say in EXIF how to turn them. msdn turns the pixels
itself (the network must see the scene upright) and writes orientation 1 back, so that no viewer
turns the output a second time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112

# EXIF orientation -> the (H, W, C) array operation Pillow's exif_transpose applies to images.
_ORIENT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation still to apply (1 when absent, unreadable or out of range)."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block should not stop a photo from being deblurred
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def upright_exif(raw: bytes | None) -> bytes | None:
    """The EXIF to write back, with orientation 1 since the pixels are already upright."""
    if not raw:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw)
        if ORIENTATION_TAG in exif:
            exif[ORIENTATION_TAG] = 1
        return exif.tobytes()
    except Exception:  # unparsable EXIF: drop it rather than write back a rotation we already applied
        return None


def orient(planes: np.ndarray, value: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array, as Pillow's exif_transpose does to images."""
    turn = _ORIENT.get(value)
    return planes if turn is None else np.ascontiguousarray(turn(planes))
