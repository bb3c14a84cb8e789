"""Fuzzing the readers a user's data reaches: any bytes give a clean refusal (the reader's documented error,
naming the file) or a valid result, never an unhandled exception from deep inside a decoder.

Readers: mask PNGs (evaluation, extraction/manifest, the training segment loader, validation), JPEG frames
(validation, the predictor's frame loader), SA-V masklet JSON (validation, manifest, training), COCO JSON
(`load_coco`) and `manifest.json` (validation). Inputs are random bytes, valid files with bytes flipped,
cut or inserted, and JSON documents of the right and wrong shapes.

`SAM2_FUZZ_EXAMPLES` sets the examples per reader (200 by default, so `make test` stays quick; the closing
note of issue 24 reports a 5,000-per-reader pass).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sam2.data.coco import CocoFormatError, load_coco
from sam2.data.layout import ANNOTATIONS_DIR, IMAGES_DIR, MANIFEST_NAME, DataPrepError
from sam2.data.manifest import mask_object_ids, scan_video
from sam2.data.validation import check_video, validate_dataset
from sam2.eval.masks import MaskDataError, read_mask_png
from sam2.training.dataset.errors import DatasetError
from sam2.training.dataset.vos_segment_loader import JSONSegmentLoader, PalettisedPNGSegmentLoader

EXAMPLES = int(os.environ.get("SAM2_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 200,  # the quick pass is the same every run; a long pass explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
TRIED: Counter[str] = Counter()
"""Inputs tried per reader in this session (printed by the big pass)."""

H, W = 12, 16


def _palette_png() -> bytes:
    ids = np.zeros((H, W), np.uint8)
    ids[2:6, 3:9] = 1
    ids[7:11, 8:14] = 2
    image = Image.fromarray(ids, mode="P")
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _rle(ids: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(ids.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _sav_document() -> dict:
    obj = np.zeros((H, W), np.uint8)
    obj[2:6, 3:9] = 1
    return {"masklet_id": [0], "masklet_num": 1, "masklet": [[_rle(obj)], [_rle(obj)]], "video_height": H}


def _coco_document() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "segmentation": [[1, 1, 8, 1, 8, 8]], "iscrowd": 0, "category_id": 1}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }


VALID_PNG, VALID_JPEG = _palette_png(), _jpeg()


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with a few bytes flipped, a cut, or bytes inserted (the damage real files get)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at : at + draw(st.integers(1, 64))] = b"\0" * 8
    return bytes(data)


def file_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(valid), st.just(valid[: len(valid) // 2]))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def shaped(document: dict) -> st.SearchStrategy[dict]:
    """`document` with some of its keys (at any depth of its first level) replaced by arbitrary values."""
    keys = sorted(document)
    return st.builds(
        lambda replace, values, drop: {
            k: (values.get(k) if k in replace else document[k]) for k in keys if k not in drop
        },
        st.sets(st.sampled_from(keys)),
        st.fixed_dictionaries({k: JSON_VALUES for k in keys}),
        st.sets(st.sampled_from(keys), max_size=1),
    )


def json_bytes(document: dict) -> st.SearchStrategy[bytes]:
    text = json.dumps(document).encode()
    return st.one_of(
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        shaped(document).map(lambda d: json.dumps(d).encode()),
        mutated(text),
        st.binary(max_size=256),
    )


def _in_tmp(run: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="sam2-fuzz-") as tmp:
        run(Path(tmp))


def _refuses_cleanly(
    reader: str, call: Callable[[], object], allowed: tuple[type[BaseException], ...]
) -> None:
    TRIED[reader] += 1
    with contextlib.suppress(allowed):
        call()


# ---- mask PNGs -----------------------------------------------------------------------------------------


# Found by the 5,000-example pass: PIL raises ValueError for a truncated IHDR chunk.
TRUNCATED_IHDR = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0cIHDR\x00\x00\x00\x10\x00\x00\x00\x0c\x08\x03\x00\x00\x00"


@FUZZ
@given(file_bytes(VALID_PNG))
@example(TRUNCATED_IHDR)
def test_mask_png_readers_refuse_cleanly(data: bytes) -> None:
    def run(tmp: Path) -> None:
        path = tmp / "00000.png"
        path.write_bytes(data)
        _refuses_cleanly("mask png: read_mask_png", lambda: read_mask_png(path), (MaskDataError,))
        _refuses_cleanly("mask png: mask_object_ids", lambda: mask_object_ids(path), (DataPrepError,))
        loader = PalettisedPNGSegmentLoader(str(tmp))
        _refuses_cleanly("mask png: training loader", lambda: loader.load(0), (DatasetError,))

    _in_tmp(run)


def _one_video(tmp: Path, frame: bytes, mask: bytes | None = None, sav: bytes | None = None) -> Path:
    (tmp / IMAGES_DIR / "v").mkdir(parents=True)
    (tmp / ANNOTATIONS_DIR).mkdir()
    for index in range(2):
        (tmp / IMAGES_DIR / "v" / f"{index:05d}.jpg").write_bytes(frame if index == 1 else VALID_JPEG)
    if sav is not None:
        (tmp / ANNOTATIONS_DIR / "v_manual.json").write_bytes(sav)
    else:
        (tmp / ANNOTATIONS_DIR / "v").mkdir()
        (tmp / ANNOTATIONS_DIR / "v" / "00000.png").write_bytes(mask if mask is not None else VALID_PNG)
        (tmp / ANNOTATIONS_DIR / "v" / "00001.png").write_bytes(VALID_PNG)
    return tmp


@FUZZ
@given(file_bytes(VALID_PNG))
@example(TRUNCATED_IHDR)
def test_validation_reports_any_mask_as_a_problem_never_raises(data: bytes) -> None:
    def run(tmp: Path) -> None:
        root = _one_video(tmp, VALID_JPEG, mask=data)
        TRIED["mask png: validation"] += 1
        problems, _ = check_video(root, "v", 1, None)
        assert all(isinstance(p, str) for p in problems)
        _refuses_cleanly("mask png: manifest scan", lambda: scan_video(root, "v"), (DataPrepError,))

    _in_tmp(run)


# ---- JPEG frames ---------------------------------------------------------------------------------------


@FUZZ
@given(file_bytes(VALID_JPEG))
def test_frame_readers_refuse_cleanly(data: bytes) -> None:
    from sam2.utils.misc import _read_frame

    def run(tmp: Path) -> None:
        root = _one_video(tmp, data)
        TRIED["jpeg: validation"] += 1
        problems, _ = check_video(root, "v", 1, None)
        if data != VALID_JPEG:
            assert problems or Image.open(root / IMAGES_DIR / "v" / "00001.jpg").size == (W, H)
        frame = str(root / IMAGES_DIR / "v" / "00001.jpg")
        # The predictor's loader: a RuntimeError naming the frame (what the official loader raises).
        TRIED["jpeg: predictor frame loader"] += 1
        try:
            _read_frame(frame, 32)
        except RuntimeError as err:
            assert frame in str(err)

    _in_tmp(run)


# ---- SA-V masklet JSON ---------------------------------------------------------------------------------


@FUZZ
@given(json_bytes(_sav_document()))
@example(b'{"masklet_id": null, "masklet": [[]]}')  # found by the 5,000-example pass
def test_sav_json_readers_refuse_cleanly(data: bytes) -> None:
    def run(tmp: Path) -> None:
        root = _one_video(tmp, VALID_JPEG, sav=data)
        TRIED["sa-v json: validation"] += 1
        problems, _ = check_video(root, "v", 1, None)
        assert all(isinstance(p, str) for p in problems)
        _refuses_cleanly("sa-v json: manifest scan", lambda: scan_video(root, "v"), (DataPrepError,))
        path = str(root / ANNOTATIONS_DIR / "v_manual.json")

        def load() -> None:
            loader = JSONSegmentLoader(path)
            for frame_id in loader.annotated_frame_ids()[:2]:
                loader.load(frame_id)

        _refuses_cleanly("sa-v json: training loader", load, (DatasetError,))

    _in_tmp(run)


# ---- COCO JSON -----------------------------------------------------------------------------------------


@FUZZ
@given(json_bytes(_coco_document()))
def test_coco_reader_refuses_cleanly(data: bytes) -> None:
    def run(tmp: Path) -> None:
        path = tmp / "annotations.coco.json"
        path.write_bytes(data)
        _refuses_cleanly("coco json: load_coco", lambda: load_coco(path), (CocoFormatError,))

    _in_tmp(run)


# ---- manifest.json -------------------------------------------------------------------------------------


def _manifest_document() -> dict:
    return {
        "version": "0123456789abcdef",
        "format": 1,
        "settings": {},
        "num_videos": 1,
        "num_frames": 2,
        "videos": {"v": {"num_frames": 2, "object_ids": [1, 2], "frames_sha256": "x"}},
    }


@FUZZ
@given(json_bytes(_manifest_document()))
def test_validation_refuses_any_manifest_cleanly(data: bytes) -> None:
    def run(tmp: Path) -> None:
        root = _one_video(tmp, VALID_JPEG)
        (root / MANIFEST_NAME).write_bytes(data)
        _refuses_cleanly(
            "manifest: validate_dataset", lambda: validate_dataset(root, 1, workers=1), (DataPrepError,)
        )

    _in_tmp(run)


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    if EXAMPLES > 200:
        print("\nfuzz inputs tried per reader:", dict(sorted(TRIED.items())))


@FUZZ
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_rle_counts_decodes_what_pycocotools_encodes(height: int, width: int, seed: int) -> None:
    """sam2.data.rle reads COCO's compressed counts exactly as pycocotools writes them."""
    from pycocotools import mask as mask_utils

    from sam2.data.rle import check_rle, rle_counts

    ids = np.random.default_rng(seed).random((height, width)) < 0.3
    rle = mask_utils.encode(np.asfortranarray(ids.astype(np.uint8)))
    runs = rle_counts(rle["counts"])
    flat = ids.flatten(order="F")
    assert sum(runs) == height * width
    assert int(sum(runs[1::2])) == int(flat.sum())
    assert check_rle({"size": [height, width], "counts": rle["counts"].decode()}, "x") == (height, width)


def test_rle_counts_past_the_mask_are_refused_before_pycocotools_decodes_them() -> None:
    """pycocotools' rleDecode writes runs past the buffer when they add up to more than h x w."""
    from sam2.data.rle import check_rle

    with pytest.raises(
        DataPrepError, match="f.json: frame 0: RLE counts cover 1000 pixels, its size 2x2 has 4"
    ):
        check_rle({"size": [2, 2], "counts": [0, 1000]}, "f.json: frame 0")
    with pytest.raises(DataPrepError, match="ends inside a number"):
        check_rle({"size": [2, 2], "counts": "0"[:0] + "\x60"}, "f.json")  # a continuation bit, then nothing
