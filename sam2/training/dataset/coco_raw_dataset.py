"""COCORawDataset: images of a COCO instance-segmentation file as one-frame clips, one object per annotation.

The image-only counterpart of SA1BRawDataset (upstream's image reader, which it mirrors: `img_folder`,
`file_list_txt`, `excluded_videos_list_txt`, `num_frames` copies of the image per clip), for the files
annotation tools export: polygons or RLE (`sam2.data.coco`). Object ids are the annotation ids, the
video id is the image id, so errors and evaluation name what the COCO file names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image as PILImage

from sam2.data.coco import CROWD_MODES, CocoFormatError, CocoImage, image_objects, load_coco
from sam2.training.dataset.errors import DatasetError
from sam2.training.dataset.vos_raw_dataset import VOSFrame, VOSRawDataset, VOSVideo, read_name_list
from sam2.training.dataset.vos_segment_loader import LazySegments, _decode_rles

logger = logging.getLogger(__name__)

# What crowd regions are painted with under crowd="mask_out": the normalisation mean (0 after NormalizeAPI).
_MEAN_RGB = (0.485, 0.456, 0.406)


class COCOSegmentLoader:
    """The image's objects ({annotation id: RLE}, decoded lazily), the same on every repeated frame."""

    def __init__(self, segments: LazySegments):
        self.segments = segments

    def load(self, frame_idx: int) -> LazySegments:
        return self.segments


class COCORawDataset(VOSRawDataset):
    """Images listed by a COCO file, each a clip of `num_frames` copies with its annotations as objects.

    img_folder: the folder the file's `file_name` paths are relative to (the prepared `<root>/images`).
    ann_file: the COCO JSON (the prepared `<root>/annotations.coco.json`).
    file_list_txt / excluded_videos_list_txt: image file names to use / leave out (the split's and
        validation's lists); default every image of the file.
    crowd: "skip" (default: crowd annotations are not objects), "mask_out" (also paint their pixels with
        the normalisation mean, so a crowd is neither target nor background) or "object" (prompt for them
        like any other annotation).
    max_objects_per_image: keep at most this many objects per image, the largest first (a deterministic
        bound on masks decoded per image; the sampler then draws `max_num_objects` among them); None: all.
    min_area: leave out annotations whose mask has fewer pixels.
    Images left without an object are dropped at construction (logged); none left is a DatasetError, as
    are a malformed file or annotation (naming file, image id and annotation id) and a listed name the
    file does not hold.
    """

    def __init__(
        self,
        img_folder: str,
        ann_file: str,
        file_list_txt: str | Sequence[str] | None = None,
        excluded_videos_list_txt: str | Sequence[str] | None = None,
        num_frames: int = 1,
        crowd: str = "skip",
        max_objects_per_image: int | None = None,
        min_area: int = 0,
    ):
        if crowd not in CROWD_MODES:
            raise DatasetError(f"COCORawDataset crowd must be one of {CROWD_MODES}, got {crowd!r}")
        if int(num_frames) < 1:
            raise DatasetError(f"COCORawDataset num_frames must be >= 1, got {num_frames}")
        if max_objects_per_image is not None and int(max_objects_per_image) < 1:
            raise DatasetError(f"max_objects_per_image must be >= 1 or null, got {max_objects_per_image}")
        if not os.path.isdir(img_folder):
            raise DatasetError(f"img_folder {img_folder!r} does not exist or is not a folder")
        self.img_folder = img_folder
        self.ann_file = ann_file
        self.num_frames = int(num_frames)
        self.crowd = crowd
        self.max_objects_per_image = None if max_objects_per_image is None else int(max_objects_per_image)
        self.min_area = int(min_area)
        try:
            coco = load_coco(ann_file)
        except CocoFormatError as err:
            raise DatasetError(str(err)) from err
        by_name = coco.by_name
        wanted = read_name_list(file_list_txt, "file_list_txt", drop_extension=False)
        if wanted is None:
            wanted = sorted(by_name)
        unknown = sorted(set(wanted) - set(by_name))
        if unknown:
            raise DatasetError(
                f"file_list_txt names {len(unknown)} image(s) that {ann_file!r} does not list (e.g. "
                f"{unknown[0]!r}); lists hold file names as the COCO file spells them"
            )
        excluded = set(
            read_name_list(excluded_videos_list_txt, "excluded_videos_list_txt", drop_extension=False) or []
        )
        self._images: dict[str, CocoImage] = {}
        self._objects: dict[str, list] = {}
        self._crowds: dict[str, list[dict]] = {}
        without = []
        for name in sorted(set(wanted) - excluded):
            image = by_name[name]
            try:
                objects, _ = image_objects(coco, image)
            except CocoFormatError as err:
                raise DatasetError(f"{err}; fix it or list {name!r} in excluded_videos_list_txt") from err
            crowds = [o for o in objects if o.iscrowd]
            usable = [o for o in objects if (crowd == "object" or not o.iscrowd) and o.area >= self.min_area]
            usable.sort(key=lambda o: (-o.area, o.annotation_id))
            if self.max_objects_per_image is not None:
                usable = usable[: self.max_objects_per_image]
            if not usable:
                without.append(name)
                continue
            self._images[name] = image
            self._objects[name] = usable
            self._crowds[name] = [o.rle for o in crowds] if crowd == "mask_out" else []
        if without:
            logger.warning(
                "%s: %d image(s) have no usable object (crowd=%s, min_area=%d) and are left out, e.g. %s",
                ann_file,
                len(without),
                crowd,
                self.min_area,
                without[0],
            )
        self.video_names = sorted(self._images)
        if not self.video_names:
            raise DatasetError(
                f"no image with a usable object selected from {ann_file!r} (file_list_txt={file_list_txt!r}, "
                f"excluded_videos_list_txt={excluded_videos_list_txt!r}, crowd={crowd!r})"
            )

    def video_length(self, idx: int) -> int:
        return self.num_frames

    def get_video(self, idx: int):
        name = self.video_names[idx]
        image = self._images[name]
        image_path = os.path.join(self.img_folder, image.file_name)
        if not os.path.isfile(image_path):
            raise DatasetError(
                f"image id {image.id}: {image_path!r} does not exist; run validate_dataset to exclude it"
            )
        segments = LazySegments()
        for obj in self._objects[name]:
            segments[obj.annotation_id] = obj.rle
        data = self._masked_image(image_path, image) if self._crowds[name] else None
        frames = [VOSFrame(i, image_path=image_path, data=data) for i in range(self.num_frames)]
        return VOSVideo(name, image.id, frames), COCOSegmentLoader(segments)

    def _masked_image(self, image_path: str, image: CocoImage) -> torch.Tensor:
        """float [3, H, W] in [0, 1] with the crowd regions painted with the normalisation mean."""
        try:
            with PILImage.open(image_path) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as err:
            raise DatasetError(f"image id {image.id}: cannot decode {image_path!r} ({err})") from err
        crowd = _decode_rles(self._crowds[image.file_name]).any(dim=0).numpy()
        if crowd.shape != array.shape[:2]:
            raise DatasetError(
                f"image id {image.id}: {image_path!r} is {array.shape[1]}x{array.shape[0]} but the COCO file "
                f"says {image.width}x{image.height}"
            )
        array[crowd] = _MEAN_RGB
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __len__(self) -> int:
        return len(self.video_names)
