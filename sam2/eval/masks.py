"""Reading and writing object-id mask PNGs in the two layouts VOS tools exchange.

Layouts of one video folder:
- ``palette``: ``<video>/<frame>.png``, one indexed (or grayscale) PNG per frame whose pixel value is the
  object id (0 = background); the DAVIS / MOSE layout.
- ``per_object``: ``<video>/<object id>/<frame>.png``, one binary PNG per object and frame (any non-zero
  pixel is the object); the SA-V layout and what ``vos_inference --per_obj_png_file`` writes. Objects may
  overlap in this layout.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam2.utils.atomic_io import atomic_open

try:  # zlib-ng inflates run-heavy mask data about 20x faster than the standard zlib
    from zlib_ng import zlib_ng as _inflater
except ImportError:  # pragma: no cover - the standard library is the fallback
    _inflater = zlib

Layout = Literal["palette", "per_object"]

# PIL modes whose pixel values are object ids.
_ID_MODES = {"P", "L", "1", "I;16", "I;16B", "I;16L", "I"}


class MaskDataError(ValueError):
    """A mask folder or file cannot be used: the message names the path and what to do."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_plain_png(data: bytes) -> np.ndarray | None:
    """Decodes the common mask PNG (8-bit palette or gray, not interlaced, no row filters) without PIL.

    This is what PIL and most tools write for indexed masks, and decoding dominated evaluation time:
    with zlib-ng this costs about a tenth of PIL's decode. Returns None for any other PNG (PIL then
    decodes it); the Adler-32 check of the zlib stream still catches corrupt pixel data.
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if bit_depth != 8 or color_type not in (0, 3) or interlace != 0:
        return None
    pieces = []
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            pieces.append(data[position + 8 : position + 8 + length])
        elif kind == b"IEND":
            break
        position += 12 + length
    raw = _inflater.decompress(b"".join(pieces))
    if len(raw) != height * (width + 1):
        raise zlib.error(f"pixel data holds {len(raw)} bytes, expected {height * (width + 1)}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    if rows[:, 0].any():
        return None
    return np.ascontiguousarray(rows[:, 1:])


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Decodes one mask PNG into a 2-D integer array of object ids (palette indices, not colours).

    Raises MaskDataError naming the file when it is missing, undecodable or an RGB image.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
        fast = _decode_plain_png(data)
        if fast is not None:
            return fast
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in _ID_MODES:
                raise MaskDataError(
                    f"{path}: mask PNGs must be palette (P) or grayscale images of object ids, got mode "
                    f"{image.mode!r}; save the ids with a palette instead of colours"
                )
            image.load()
            array = np.asarray(image)
    except FileNotFoundError:
        raise MaskDataError(f"{path}: mask file not found") from None
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        zlib.error,
        _inflater.error,
        struct.error,
    ) as error:
        if isinstance(error, MaskDataError):
            raise
        raise MaskDataError(f"{path}: cannot decode the mask PNG ({error}); rewrite or remove it") from None
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim != 2:
        raise MaskDataError(f"{path}: expected a single-channel mask, got an array of shape {array.shape}")
    return array


def read_palette(path: str | os.PathLike) -> list[int] | None:
    """The palette (flat RGB list) of an indexed PNG, or None when the image has none."""
    try:
        with Image.open(path) as image:
            return image.getpalette() if image.mode == "P" else None
    except (OSError, UnidentifiedImageError) as error:
        raise MaskDataError(f"{path}: cannot read the PNG palette ({error})") from None


def default_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map (id i -> bit-interleaved RGB), 256 entries, flat."""
    palette: list[int] = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return palette


def write_palette_png(path: str | os.PathLike, ids: np.ndarray, palette: list[int] | None = None) -> None:
    """Writes a 2-D id array as an indexed PNG, atomically (temp name in the same folder + rename)."""
    if ids.ndim != 2:
        raise ValueError(f"{path}: a mask to write must be 2-D, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"{path}: palette PNGs hold ids 0..255, got {ids.min()}..{ids.max()}")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(palette if palette is not None else default_palette())
    with atomic_open(path, "wb") as stream:
        image.save(stream, format="PNG")


def _png_names(folder: Path) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(folder) if entry.is_file() and entry.name.endswith(".png")
    )


@dataclass(frozen=True)
class VideoMasks:
    """One video's mask folder: its layout, sorted frame file names and, per object layout, object folders."""

    root: Path
    layout: Layout
    frames: tuple[str, ...]
    object_dirs: dict[int, str]

    @classmethod
    def open(cls, root: str | os.PathLike) -> VideoMasks:
        """Scans a video folder and detects its layout; raises MaskDataError when it holds no masks."""
        folder = Path(root)
        if not folder.is_dir():
            raise MaskDataError(f"{folder}: video mask folder not found")
        frames = _png_names(folder)
        if frames:
            return cls(folder, "palette", tuple(frames), {})
        object_dirs: dict[int, str] = {}
        for entry in sorted(os.scandir(folder), key=lambda item: item.name):
            if not entry.is_dir():
                continue
            try:
                object_id = int(entry.name)
            except ValueError:
                raise MaskDataError(
                    f"{entry.path}: per-object mask folders must be named by integer object id (e.g. 001)"
                ) from None
            if object_id in object_dirs:
                raise MaskDataError(f"{entry.path}: object id {object_id} has two folders in {folder}")
            object_dirs[object_id] = entry.name
        if not object_dirs:
            raise MaskDataError(
                f"{folder}: no mask PNGs (<frame>.png) and no per-object folders (<id>/<frame>.png) found"
            )
        frame_sets = {object_id: _png_names(folder / name) for object_id, name in object_dirs.items()}
        union = sorted(set().union(*frame_sets.values()))
        return cls(folder, "per_object", tuple(union), object_dirs)

    def read_ids(self, frame: str) -> np.ndarray:
        """The id map of one frame (palette layout only)."""
        return read_mask_png(self.root / frame)

    def read_objects(self, frame: str, required: bool = True) -> dict[int, np.ndarray]:
        """Binary masks (uint8 0/1) of one frame by object id, in either layout.

        In the per-object layout a missing file raises MaskDataError when `required`, else the object is
        left out of the frame.
        """
        if self.layout == "palette":
            ids = self.read_ids(frame)
            return {int(i): (ids == i).view(np.uint8) for i in np.unique(ids) if i != 0}
        objects: dict[int, np.ndarray] = {}
        for object_id, name in self.object_dirs.items():
            path = self.root / name / frame
            if not required and not path.exists():
                continue
            objects[object_id] = (read_mask_png(path) != 0).view(np.uint8)
        return objects
