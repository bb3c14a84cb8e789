"""Checks for the COCO run-length masks (RLE) of SA-V masklet JSON and COCO files, before pycocotools sees
them.

pycocotools' C decoder trusts its input: counts that add up to more than height x width are written past
the end of the mask buffer, and a compressed counts string that ends inside a number is read past its end.
A damaged annotation file could then crash the process (or corrupt memory) instead of being named. Every
reader of user RLEs (validation, the manifest, the training segment loader) checks an RLE here first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sam2.data.layout import DataPrepError

MAX_SIDE = 1 << 16
"""Largest mask side accepted (pixels); larger sizes are a damaged file, not a video."""


def rle_counts(counts: Any) -> list[int]:
    """The run lengths of an RLE's ``counts``: a list of ints, or COCO's compressed string (or bytes).

    Raises:
        ValueError: not a list of non-negative ints nor a well-formed compressed string.
    """
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("counts must be non-negative integers")
        return counts
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="strict")
    if not isinstance(counts, str):
        raise ValueError(f"counts is a {type(counts).__name__}, expected a string or a list of integers")
    values: list[int] = []
    position = 0
    while position < len(counts):  # the format of pycocotools' rleFrString (maskApi.c)
        value = shift = 0
        more = True
        while more:
            if position >= len(counts):
                raise ValueError("the counts string ends inside a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[position]!r} is not an RLE counts character")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(values) > 2:
            value += values[-2]
        if value < 0:
            raise ValueError("a run length is negative")
        values.append(value)
    return values


def check_rle(rle: Any, where: str) -> tuple[int, int]:
    """(height, width) of a well-formed RLE whose runs cover exactly height x width pixels.

    Raises:
        DataPrepError: naming ``where`` (file and position) and what is wrong.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DataPrepError(f"{where}: expected an RLE {{'size': [h, w], 'counts': ...}}, got {_kind(rle)}")
    size = rle["size"]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size)
    ):
        raise DataPrepError(f"{where}: RLE size {size!r} is not [height, width] in pixels")
    try:
        runs = rle_counts(rle["counts"])
    except (ValueError, UnicodeDecodeError) as err:
        raise DataPrepError(f"{where}: RLE counts are damaged ({err})") from None
    height, width = size
    if sum(runs) != height * width:
        raise DataPrepError(
            f"{where}: RLE counts cover {sum(runs)} pixels, its size {height}x{width} has {height * width}"
        )
    return height, width


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}" if not isinstance(value, dict) else f"keys {sorted(value)[:5]}"


def read_json_document(path: str | Path) -> Any:
    """The JSON value in ``path``.

    Raises:
        DataPrepError: the file cannot be read, is not UTF-8 text or not JSON (naming the file).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise DataPrepError(f"{path}: cannot read it ({err.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataPrepError(f"{path} is not readable JSON ({err})") from None


def check_sav_annotation(annotation: Any, path: str | Path, check_rles: bool = True) -> dict:
    """An SA-V ``_manual.json`` document checked for the shape the readers rely on: a dict whose
    ``masklet`` is a list of per-frame lists of RLEs (or null for an object unannotated there), whose
    ``masklet_id`` (when present) is a list of ints and ``masklet_num`` an int. Returns it.

    ``check_rles=False`` checks the shape only (a reader that decodes few RLEs checks those itself).

    Raises:
        DataPrepError: naming the file and the frame / object at fault.
    """
    if not isinstance(annotation, dict):
        raise DataPrepError(
            f"{path}: expected an SA-V masklet object (a dict with 'masklet'), got {_kind(annotation)}"
        )
    masklet = annotation.get("masklet")
    if not isinstance(masklet, list):
        raise DataPrepError(f"{path} has no 'masklet' frames")
    ids = annotation.get("masklet_id")
    if ids is not None and (
        not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise DataPrepError(f"{path}: 'masklet_id' must be a list of integer object ids, got {ids!r:.80}")
    num = annotation.get("masklet_num", 0)
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise DataPrepError(f"{path}: 'masklet_num' must be a count of objects, got {num!r:.80}")
    for index, frame in enumerate(masklet):
        if frame is None:
            continue
        if not isinstance(frame, list):
            raise DataPrepError(f"{path}: annotated frame {index} is {_kind(frame)}, expected a list of RLEs")
        for obj, rle in enumerate(frame):
            if rle is not None and check_rles:
                check_rle(rle, f"{path}: annotated frame {index}, object {obj}")
    return annotation
