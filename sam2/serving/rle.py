"""COCO run-length encoding of binary masks, the format SAM 2's tools (SA-V, SA-1B) use.

Counts are column-major runs starting with background, as pycocotools writes them; the JSON form
holds `counts` as a string (`{"size": [height, width], "counts": "..."}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict[str, Any]:
    """The COCO RLE (JSON form) of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"a mask to encode is 2-D, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean mask of a COCO RLE given as `{"size": [h, w], "counts": str | list[int]}`.

    Raises ValueError naming what is wrong with a malformed RLE.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError('a mask is a COCO RLE {"size": [height, width], "counts": ...}')
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ValueError(f"RLE size must be [height, width] of positive integers, got {size!r}")
    counts = rle["counts"]
    height, width = int(size[0]), int(size[1])
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(
                f"uncompressed RLE counts must be non-negative integers summing to {height}x{width}"
            )
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        compressed = {"size": [height, width], "counts": counts.encode("ascii")}
    else:
        raise ValueError(f"RLE counts must be a string or a list of integers, got {type(counts).__name__}")
    try:
        mask = mask_utils.decode(compressed)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare errors on bad counts
        raise ValueError(f"RLE counts do not decode to a {height}x{width} mask: {exc}") from None
    if mask.shape != (height, width):
        raise ValueError(f"RLE decodes to shape {mask.shape}, not its size {height}x{width}")
    return mask.astype(bool)
