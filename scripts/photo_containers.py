"""Pictures stored inside other files: JPEG streams in Enlightenment's Eet files, files in Qt resources.

Used by `get_photos.py` for sources whose photos are not plain files (`"container": "eet"|"rcc"`).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

from PIL import Image

# ---------------------------------------------------------------- JPEG streams inside Eet files

SOI = b"\xff\xd8\xff"
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length field


def jpeg_end(buf: bytes, start: int) -> int | None:
    """Offset one past the EOI of the JPEG starting at `start`, or None if the stream is broken.

    Walks the marker segments instead of searching for the next FFD9, so EXIF thumbnails (whole
    JPEGs inside APP1) and FFD9 byte pairs inside segments do not end the image early.
    """
    n = len(buf)
    i = start + 2
    while i + 1 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker in _STANDALONE:
            i += 2
            continue
        if i + 3 >= n:
            return None
        seg_end = i + 2 + int.from_bytes(buf[i + 2:i + 4], "big")
        if marker != 0xDA:
            i = seg_end
            continue
        j = seg_end  # entropy-coded data: it ends at the first FF that is not stuffing/RST/fill
        while True:
            j = buf.find(b"\xff", j)
            if j < 0 or j + 1 >= n:
                return None
            nxt = buf[j + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                j += 2
            elif nxt == 0xFF:
                j += 1
            else:
                i = j
                break
    return None


def iter_jpegs(buf: bytes) -> Iterator[tuple[int, bytes, tuple[int, int]]]:
    """(offset, bytes, (w, h)) of every complete JPEG inside `buf` that PIL decodes.

    Enlightenment keeps lossy images in its `.edj` Eet files as raw JPEG streams, one per screen
    resolution, so this finds them without an Eet parser.
    """
    pos = 0
    while (start := buf.find(SOI, pos)) >= 0:
        end = jpeg_end(buf, start)
        size = None
        if end is not None:
            try:
                with Image.open(io.BytesIO(buf[start:end])) as im:
                    im.load()
                    size = im.size
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                size = None
        if size is None:
            pos = start + 1
            continue
        yield start, buf[start:end], size
        pos = end


def largest_jpeg(buf: bytes) -> bytes | None:
    best = max(iter_jpegs(buf), key=lambda t: t[2][0] * t[2][1], default=None)
    return None if best is None else best[1]


# ---------------------------------------------------------------- files inside Qt resource (.rcc) files


def rcc_files(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every file inside a Qt binary resource (`rcc -binary`, format versions 1-3).

    GCompris ships each activity's pictures inside one `.rcc` file. Layout: a header `qres`,
    version, tree/data/names offsets; tree nodes (14 bytes, 22 from version 2 on: name offset,
    flags, then children count + first child for a directory or locale + data offset for a file);
    a name is a u16 length, a u32 hash and UTF-16BE text; data is a u32 length and the bytes
    (flag 1: zlib with a u32 size prefix, flag 4: zstd, which no picture here uses).
    """
    if buf[:4] != b"qres":
        raise ValueError("not a Qt resource file (no qres header)")
    version, tree, data, names = struct.unpack(">IIII", buf[4:20])
    node = 22 if version >= 2 else 14

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", buf[names + off:names + off + 2])
        return buf[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        idx, parent = stack.pop()
        p = tree + idx * node
        name_off, flags = struct.unpack(">IH", buf[p:p + 6])
        path = f"{parent}/{name_at(name_off)}" if idx else ""
        if flags & 2:
            count, first = struct.unpack(">II", buf[p + 6:p + 14])
            stack.extend((c, path) for c in reversed(range(first, first + count)))
            continue
        (off,) = struct.unpack(">I", buf[p + 10:p + 14])
        (size,) = struct.unpack(">I", buf[data + off:data + off + 4])
        blob = buf[data + off + 4:data + off + 4 + size]
        if flags & 4:
            continue  # zstd-compressed: not needed for any source so far
        yield path, zlib.decompress(blob[4:]) if flags & 1 else blob
