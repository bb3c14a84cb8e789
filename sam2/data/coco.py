"""COCO instance-segmentation files (what Roboflow, CVAT and Label Studio export) as an image data set.

Reading: `load_coco` checks the file's structure (an `images` list with unique ids, file names and sizes;
`annotations` that name a known image and carry a unique id) and raises `CocoFormatError` naming the
file, the image id and the annotation id at fault. `annotation_rle` turns one annotation's segmentation
(polygons, uncompressed or compressed RLE) into a compressed RLE with pycocotools, checking it against
the image's size.

The prepared layout (what extraction writes, validation checks and splitting lists):

    <root>/images/<file_name>               the images, under the file names the COCO file gives
    <root>/annotations.coco.json            the COCO file, as given
    <root>/manifest.json                    per image its SHA-256, and the data set version

Crowd annotations (`iscrowd: 1`) are not objects to prompt for: by default they are skipped; training can
also paint them out of the image (`crowd: mask_out`) or keep them as objects (`crowd: object`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pycocotools import mask as mask_utils

from sam2.data.layout import IMAGES_DIR, MANIFEST_NAME, SAV_ANNOTATION_SUFFIX, DataPrepError
from sam2.data.validation_report import ValidationReport
from sam2.utils.atomic_io import atomic_write_text
from sam2.utils.file_hashing import sha256_of_file

logger = logging.getLogger(__name__)

COCO_IMAGES_DIR = "images"
COCO_ANNOTATION_NAME = "annotations.coco.json"
COCO_MANIFEST_FORMAT = "sam2-coco-1"
CROWD_MODES = ("skip", "mask_out", "object")


class CocoFormatError(DataPrepError):
    """A COCO file, image or annotation that cannot be used; the message names file, image and annotation."""

    def __init__(
        self, message: str, *, file: str | os.PathLike, image_id: Any = None, annotation_id: Any = None
    ) -> None:
        where = [str(file)]
        if image_id is not None:
            where.append(f"image id {image_id}")
        if annotation_id is not None:
            where.append(f"annotation id {annotation_id}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.file = str(file)
        self.image_id = image_id
        self.annotation_id = annotation_id


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass
class CocoFile:
    """A structurally valid COCO file: images by id and by file name, annotations by image id."""

    path: Path
    images: dict[int, CocoImage]
    annotations: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def by_name(self) -> dict[str, CocoImage]:
        return {image.file_name: image for image in self.images.values()}

    def annotations_of(self, image_id: int) -> list[dict]:
        return self.annotations.get(image_id, [])


def _int_field(entry: Mapping, key: str, path: Path, **where: Any) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise CocoFormatError(f"{key!r} must be an integer, got {value!r}", file=path, **where)
    return int(value)


def load_coco(path: str | os.PathLike) -> CocoFile:
    """Read and check a COCO instance-segmentation file.

    Raises:
        CocoFormatError: unreadable JSON, missing `images`/`annotations` lists, an image without an integer
            id, a file name or a positive width/height, a duplicate image id or file name, an annotation
            without an integer id or with a duplicate one, or naming an unknown image; each names the
            file and the image / annotation id.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise CocoFormatError(f"cannot read the file ({err.strerror})", file=path) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoFormatError(f"not valid JSON ({err})", file=path) from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFormatError("not a COCO file: no 'images' list at the top level", file=path)
    if not isinstance(data.get("annotations", []), list):
        raise CocoFormatError("'annotations' must be a list", file=path)
    images: dict[int, CocoImage] = {}
    names: dict[str, int] = {}
    for position, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise CocoFormatError(f"images[{position}] is not an object", file=path)
        image_id = _int_field(entry, "id", path, image_id=entry.get("id", f"#{position}"))
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoFormatError("no 'file_name'", file=path, image_id=image_id)
        width = _int_field(entry, "width", path, image_id=image_id)
        height = _int_field(entry, "height", path, image_id=image_id)
        if width <= 0 or height <= 0:
            raise CocoFormatError(f"size {width}x{height} is not positive", file=path, image_id=image_id)
        if image_id in images:
            raise CocoFormatError("duplicate image id", file=path, image_id=image_id)
        normalised = Path(file_name).as_posix()
        if Path(normalised).is_absolute() or ".." in Path(normalised).parts:
            raise CocoFormatError(
                f"file_name {file_name!r} must be a relative path inside the images folder",
                file=path,
                image_id=image_id,
            )
        if normalised in names:
            raise CocoFormatError(
                f"file_name {file_name!r} is also image id {names[normalised]}", file=path, image_id=image_id
            )
        names[normalised] = image_id
        images[image_id] = CocoImage(image_id, normalised, width, height)
    coco = CocoFile(path=path, images=images)
    seen: set[int] = set()
    for position, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            raise CocoFormatError(f"annotations[{position}] is not an object", file=path)
        ann_id = _int_field(ann, "id", path, annotation_id=ann.get("id", f"#{position}"))
        image_id = _int_field(ann, "image_id", path, annotation_id=ann_id)
        if ann_id in seen:
            raise CocoFormatError(
                "duplicate annotation id", file=path, image_id=image_id, annotation_id=ann_id
            )
        seen.add(ann_id)
        if image_id not in images:
            raise CocoFormatError(
                "names an image id that 'images' does not list",
                file=path,
                image_id=image_id,
                annotation_id=ann_id,
            )
        coco.annotations.setdefault(image_id, []).append(ann)
    return coco


def annotation_rle(ann: Mapping, image: CocoImage, path: str | os.PathLike) -> dict:
    """The compressed RLE of one annotation's segmentation (polygons merged into one mask).

    Raises:
        CocoFormatError: no segmentation, a polygon with fewer than 3 points or an odd number of
            coordinates, an RLE whose size is not the image's or whose counts do not cover it.
    """
    where = {"file": path, "image_id": image.id, "annotation_id": ann.get("id")}
    seg = ann.get("segmentation")
    h, w = image.height, image.width
    if isinstance(seg, list):
        polygons = [p for p in seg if p]
        if not polygons:
            raise CocoFormatError("empty polygon segmentation", **where)
        for poly in polygons:
            if not isinstance(poly, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in poly
            ):
                raise CocoFormatError("a polygon must be a flat list of x, y numbers", **where)
            if len(poly) < 6 or len(poly) % 2:
                raise CocoFormatError(
                    f"a polygon needs x, y pairs of at least 3 points, got {len(poly)} numbers", **where
                )
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list | tuple) or len(size) != 2 or counts is None:
            raise CocoFormatError("an RLE segmentation needs 'size' [height, width] and 'counts'", **where)
        if [int(size[0]), int(size[1])] != [h, w]:
            raise CocoFormatError(
                f"RLE size {list(size)} (height, width) is not the image's [{h}, {w}]", **where
            )
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != h * w:
                raise CocoFormatError(
                    f"uncompressed RLE counts sum to {sum(int(c) for c in counts)}, not height x width = {h * w}",
                    **where,
                )
            return mask_utils.frPyObjects(seg, h, w)
        if isinstance(counts, str | bytes):
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
            try:
                mask_utils.area(rle)
            except Exception as err:  # pycocotools raises bare errors for undecodable counts
                raise CocoFormatError(f"compressed RLE counts do not decode ({err})", **where) from err
            return rle
        raise CocoFormatError(
            f"RLE 'counts' must be a list or a string, got {type(counts).__name__}", **where
        )
    raise CocoFormatError(
        f"'segmentation' must be polygons (a list) or an RLE (an object), got {type(seg).__name__}", **where
    )


@dataclass(frozen=True)
class CocoObject:
    """One usable annotation of an image: its id, compressed RLE, pixel area and crowd flag."""

    annotation_id: int
    rle: dict
    area: int
    iscrowd: bool


def image_objects(coco: CocoFile, image: CocoImage) -> tuple[list[CocoObject], list[str]]:
    """The annotations of `image` with a non-empty mask, and notes on those left out (empty masks).

    Raises CocoFormatError for an annotation that cannot be read (see `annotation_rle`)."""
    objects, notes = [], []
    for ann in coco.annotations_of(image.id):
        rle = annotation_rle(ann, image, coco.path)
        area = int(mask_utils.area(rle))
        if area == 0:
            notes.append(f"annotation id {ann['id']}: empty mask, left out")
            continue
        objects.append(CocoObject(int(ann["id"]), rle, area, bool(ann.get("iscrowd", 0))))
    return objects, notes


# ---- finding and preparing ------------------------------------------------------------------------


def _looks_like_coco(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" in data


def find_coco_file(root: str | os.PathLike, max_depth: int = 3) -> Path | None:
    """The COCO file of a source folder (up to `max_depth` levels down), or None when it holds none.

    A folder with a video layout (JPEGImages/) is not a COCO source. Raises DataPrepError when several
    COCO files are found (name the one to use by passing it, or its folder, alone)."""
    root = Path(root)
    if root.is_file():
        return root if root.suffix == ".json" and _looks_like_coco(root) else None
    if not root.is_dir() or (root / IMAGES_DIR).is_dir():
        return None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and depth < max_depth and d != IMAGES_DIR]
        for name in filenames:
            skipped = name == MANIFEST_NAME or name.endswith((SAV_ANNOTATION_SUFFIX, "_auto.json"))
            if name.endswith(".json") and not skipped and _looks_like_coco(Path(dirpath) / name):
                found.append(Path(dirpath) / name)
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(root)) for p in sorted(found)[:5])
        raise DataPrepError(
            f"{root} holds {len(found)} COCO files ({listed}); prepare one at a time (its folder, or the file)"
        )
    return found[0] if found else None


def coco_annotation_path(root: str | os.PathLike) -> Path | None:
    """The COCO file of a prepared data set root, or of a path that is itself a COCO file; else None."""
    root = Path(root)
    if root.is_file() and root.suffix == ".json":
        return root
    candidate = root / COCO_ANNOTATION_NAME
    return candidate if candidate.is_file() else None


def _images_base(coco: CocoFile) -> Path | None:
    """The folder the COCO file's file names are relative to: the file's own folder or one of its
    subfolders (Roboflow, Label Studio: images beside the JSON; CVAT: images/), or, for a file inside an
    `annotations/` folder (COCO's own layout, CVAT), that folder's parent or one of its subfolders
    (e.g. train2017/)."""
    if not coco.images:
        return coco.path.parent
    sample = next(iter(coco.images.values())).file_name
    here = coco.path.parent
    roots = [here, here.parent] if here.name == "annotations" else [here]
    for root in roots:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for base in (root, *subfolders):
            if (base / sample).is_file():
                return base
    return None


@dataclass
class CocoExtraction:
    root: Path
    version: str
    num_images: int
    missing: list[str]


def build_coco_manifest(root: Path, coco: CocoFile, missing: Iterable[str] = ()) -> dict:
    """The manifest of a prepared COCO data set: image checksums, the COCO file's, and the version."""
    images = {}
    for image in sorted(coco.images.values(), key=lambda i: i.file_name):
        path = root / COCO_IMAGES_DIR / image.file_name
        if path.is_file():
            images[image.file_name] = {"image_id": image.id, "sha256": sha256_of_file(path)}
    body = {
        "format": COCO_MANIFEST_FORMAT,
        "annotation_file": COCO_ANNOTATION_NAME,
        "annotation_sha256": sha256_of_file(root / COCO_ANNOTATION_NAME),
        "num_images": len(images),
        "num_annotations": sum(len(v) for v in coco.annotations.values()),
        "missing_images": sorted(missing),
        "images": images,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {"version": hashlib.sha256(canonical).hexdigest()[:16], **body}


def extract_coco_dataset(coco_path: str | os.PathLike, output: str | os.PathLike) -> CocoExtraction:
    """Lay a COCO source out as `<output>/images/`, `<output>/annotations.coco.json` and a manifest.

    Images the file lists but the source lacks are recorded in the manifest (`missing_images`) and left
    to validation to report by name; nothing else is dropped.

    Raises:
        CocoFormatError: the file's structure (see `load_coco`), or no folder holds its images.
    """
    coco = load_coco(coco_path)
    base = _images_base(coco)
    if base is None:
        sample = next(iter(coco.images.values()))
        raise CocoFormatError(
            f"image file {sample.file_name!r} is found neither next to the file, in an images/ folder beside "
            "it, nor one level up; put the images where the COCO file's file_name paths point",
            file=coco.path,
            image_id=sample.id,
        )
    out = Path(output)
    (out / COCO_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    missing = []
    for image in coco.images.values():
        src, dest = base / image.file_name, out / COCO_IMAGES_DIR / image.file_name
        if not src.is_file():
            missing.append(image.file_name)
            continue
        if dest.is_file() and dest.stat().st_size == src.stat().st_size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    if missing:
        logger.warning(
            "%s: %d listed image(s) are not in %s (e.g. %s); validation will report them",
            coco.path,
            len(missing),
            base,
            sorted(missing)[0],
        )
    if coco.path.resolve() != (out / COCO_ANNOTATION_NAME).resolve():
        atomic_write_text(out / COCO_ANNOTATION_NAME, coco.path.read_text())
    manifest = build_coco_manifest(out, coco, missing)
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return CocoExtraction(out, manifest["version"], manifest["num_images"], sorted(missing))


# ---- validation and splitting ------------------------------------------------------------------------


def check_image(root: Path, coco: CocoFile, image: CocoImage) -> tuple[list[str], list[str]]:
    """Problems (the image is bad) and notes for one image of a prepared COCO data set."""
    problems: list[str] = []
    notes: list[str] = []
    prefix = f"image id {image.id}"
    path = root / COCO_IMAGES_DIR / image.file_name
    if not path.is_file():
        return [f"{prefix}: file {path} does not exist"], notes
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except (OSError, SyntaxError, ValueError) as err:
        return [f"{prefix}: {path} does not decode ({err})"], notes
    if size != (image.width, image.height):
        problems.append(
            f"{prefix}: {path.name} is {size[0]}x{size[1]} but the COCO file says {image.width}x{image.height}"
        )
    try:
        objects, empty = image_objects(coco, image)
    except CocoFormatError as err:
        problems.append(str(err))
        return problems, notes
    notes += [f"{prefix}, {n}" for n in empty]
    if not any(not o.iscrowd for o in objects):
        problems.append(f"{prefix}: no non-crowd annotation with a non-empty mask (nothing to prompt for)")
    return problems, notes


def validate_coco_dataset(root: str | os.PathLike, workers: int | None = None) -> ValidationReport:
    """Check every image of the prepared COCO data set at `root`: the file decodes at the size the COCO
    file states, every annotation's segmentation reads and fits it, and at least one non-crowd object
    is left; returns a `ValidationReport` keyed by file name (num_frames 1).

    Raises:
        CocoFormatError: the COCO file's structure (see `load_coco`), or it lists no image.
    """
    root = Path(root)
    ann_path = coco_annotation_path(root)
    if ann_path is None:
        raise DataPrepError(f"{root}: no {COCO_ANNOTATION_NAME}; run extract_frames on the COCO source first")
    coco = load_coco(ann_path)
    if not coco.images:
        raise CocoFormatError("lists no images", file=ann_path)
    base = root if ann_path.parent == root else ann_path.parent
    report = ValidationReport(root=str(root), num_frames=1)
    images = sorted(coco.images.values(), key=lambda i: i.file_name)
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        results = pool.map(lambda image: check_image(base, coco, image), images)
        for image, (problems, notes) in zip(images, results, strict=True):
            if problems:
                report.bad[image.file_name] = problems
            else:
                report.good.append(image.file_name)
            if notes:
                report.warnings[image.file_name] = notes
    return report


def coco_object_counts(ann_path: str | os.PathLike) -> dict[str, int]:
    """Non-crowd annotations per image file name (for a split stratified by object count)."""
    coco = load_coco(ann_path)
    return {
        image.file_name: sum(1 for a in coco.annotations_of(image.id) if not a.get("iscrowd", 0))
        for image in coco.images.values()
    }
