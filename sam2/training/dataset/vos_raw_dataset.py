"""Raw data sets: which videos exist, which frames each has, and which mask reader goes with it.

A raw data set knows nothing about sampling or augmentation; `get_video(idx)` returns the video's frame
list and a segment loader. Supported layouts:

- PNGRawDataset (DAVIS, MOSE): `<img_folder>/<video>/<int>.jpg` and palette PNGs
  `<gt_folder>/<video>/<int>.png`, or `<gt_folder>/<video>/<object>/<int>.png` with is_palette=False.
- SAVRawDataset (SA-V): `<img_folder>/<video>/<int>.jpg` extracted from `<video>.mp4` and
  `<gt_folder>/<video>_manual.json` masklets in COCO RLE, annotated every `ann_every` frames.
- SA1BRawDataset (SA-1B): `<img_folder>/<image>.jpg` with `<gt_folder>/<image>.json`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sam2.training.dataset.errors import DatasetError
from sam2.training.dataset.vos_segment_loader import (
    JSONSegmentLoader,
    MultiplePNGSegmentLoader,
    PalettisedPNGSegmentLoader,
    SA1BSegmentLoader,
)

# Image files that are not read as frames; finding them instead of .jpg is reported, not skipped silently.
_OTHER_IMAGE_EXTENSIONS = {".png", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass
class VOSFrame:
    """One listed frame: its id in the video, its JPEG, or `data` (float [3, H, W]) when already decoded."""

    frame_idx: int
    image_path: str
    data: torch.Tensor | None = None


@dataclass
class VOSVideo:
    video_name: str
    video_id: int
    frames: list[VOSFrame]

    def __len__(self) -> int:
        return len(self.frames)


class VOSRawDataset:
    """Interface: `get_video(idx) -> (VOSVideo, segment loader)`, `__len__`, optional `video_length`."""

    def get_video(self, idx: int):
        raise NotImplementedError

    def video_length(self, idx: int) -> int | None:
        """Frames `get_video(idx)` will list, when known without reading annotations; else None."""
        return None

    def __len__(self) -> int:
        raise NotImplementedError


def read_name_list(
    paths: str | Sequence[str] | None, setting: str, drop_extension: bool = True
) -> list[str] | None:
    """Names, one a line (blank lines skipped; the extension dropped for video names, kept for image file
    names), from one or several list files; DatasetError naming `setting` and the file when one is unreadable."""
    if paths is None:
        return None
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    names: list[str] = []
    for path in paths:
        try:
            with open(path) as f:
                stripped = (line.strip() for line in f)
                names.extend(os.path.splitext(n)[0] if drop_extension else n for n in stripped if n)
        except OSError as err:
            raise DatasetError(f"cannot read {setting} {str(path)!r}: {err.strerror}") from err
    return names


def select_videos(
    img_folder: str,
    file_list_txt: str | Sequence[str] | None,
    excluded_videos_list_txt: str | Sequence[str] | None,
) -> list[str]:
    """Sorted video names: those of `file_list_txt` (or every entry of img_folder) minus the excluded."""
    if not os.path.isdir(img_folder):
        raise DatasetError(f"img_folder {img_folder!r} does not exist or is not a folder")
    subset = read_name_list(file_list_txt, "file_list_txt")
    present = [n for n in os.listdir(img_folder) if not n.startswith(".")]
    if subset is None:
        subset = present
    else:
        missing = sorted(set(subset) - set(present))
        if missing:
            raise DatasetError(
                f"file_list_txt {file_list_txt!r} names {len(missing)} of its {len(set(subset))} videos that "
                f"img_folder {img_folder!r} does not hold (e.g. {', '.join(repr(m) for m in missing[:3])}). "
                "The recipes list upstream's MOSE videos: for your own data pass dataset.file_list_txt=null "
                "(every video of img_folder) or your split's train.txt"
            )
    excluded = set(read_name_list(excluded_videos_list_txt, "excluded_videos_list_txt") or [])
    names = sorted({n for n in subset if n not in excluded})
    if not names:
        raise DatasetError(
            f"no videos selected from {img_folder!r} (file_list_txt={file_list_txt!r}, "
            f"excluded_videos_list_txt={excluded_videos_list_txt!r})"
        )
    return names


def list_jpeg_frames(video_dir: str, video_name: str) -> list[tuple[int, str]]:
    """(frame id, path) of the video's `<int>.jpg` frames sorted by id; raises on other image types."""
    if not os.path.isdir(video_dir):
        raise DatasetError(
            f"video {video_name!r}: frame folder {video_dir!r} does not exist; remove the video from "
            "file_list_txt or extract its frames (python -m sam2.tools.extract_frames)"
        )
    frames, others = [], []
    for name in os.listdir(video_dir):
        if name.startswith("."):
            continue
        stem, ext = os.path.splitext(name)
        if ext == ".jpg":
            try:
                frames.append((int(stem), os.path.join(video_dir, name)))
            except ValueError as err:
                raise DatasetError(
                    f"video {video_name!r}: frame {name!r} is not named by an integer frame id "
                    "(expected e.g. 00012.jpg); rename the frames or re-extract them"
                ) from err
        elif ext.lower() in _OTHER_IMAGE_EXTENSIONS or ext == ".JPG":
            others.append(name)
    if others:
        raise DatasetError(
            f"video {video_name!r}: {len(others)} frame(s) in {video_dir!r} are not .jpg (e.g. "
            f"{sorted(others)[0]!r}); training reads <int>.jpg frames only: convert them (python -m "
            "sam2.tools.extract_frames) or exclude the video"
        )
    if not frames:
        raise DatasetError(f"video {video_name!r}: no <int>.jpg frames in {video_dir!r}")
    return sorted(frames)


def _subsample(frames: list, truncate_video: int, sample_rate: int) -> list:
    if truncate_video > 0:
        frames = frames[:truncate_video]
    return frames[::sample_rate]


def _check_sampling_args(sample_rate: int, truncate_video: int) -> None:
    if int(sample_rate) < 1:
        raise DatasetError(f"sample_rate must be >= 1, got {sample_rate}")
    if truncate_video == 0:
        raise DatasetError("truncate_video must be > 0 (keep that many frames) or -1 (keep all)")


class PNGRawDataset(VOSRawDataset):
    """DAVIS/MOSE-style videos: JPEG frames with palette PNG masks (or one PNG folder per object).

    The frame folders are listed once here, so layout problems (missing folders, non-.jpg frames) are
    reported when the data set is built rather than inside a loader worker.
    """

    def __init__(
        self,
        img_folder: str,
        gt_folder: str,
        file_list_txt: str | Sequence[str] | None = None,
        excluded_videos_list_txt: str | Sequence[str] | None = None,
        sample_rate: int = 1,
        is_palette: bool = True,
        single_object_mode: bool = False,
        truncate_video: int = -1,
        frames_sampling_mult: bool = False,
    ):
        _check_sampling_args(sample_rate, truncate_video)
        self.img_folder = img_folder
        self.gt_folder = gt_folder
        self.sample_rate = int(sample_rate)
        self.is_palette = is_palette
        self.single_object_mode = single_object_mode
        self.truncate_video = truncate_video
        if single_object_mode and is_palette:
            raise DatasetError("single_object_mode=True needs is_palette=False (one PNG folder per object)")
        if not os.path.isdir(gt_folder):
            raise DatasetError(f"gt_folder {gt_folder!r} does not exist or is not a folder")

        videos = select_videos(img_folder, file_list_txt, excluded_videos_list_txt)
        self._frames: dict[str, list[tuple[int, str]]] = {}
        for video in videos:
            if not os.path.isdir(os.path.join(gt_folder, video)):
                raise DatasetError(
                    f"video {video!r}: no annotation folder {os.path.join(gt_folder, video)!r}; add its "
                    "masks or list the video in excluded_videos_list_txt"
                )
            frames = _subsample(
                list_jpeg_frames(os.path.join(img_folder, video), video), truncate_video, self.sample_rate
            )
            self._frames[video] = frames

        # Entries are "<video>" or, in single-object mode, "<video>/<object folder>".
        entries = videos
        if single_object_mode:
            entries = [
                f"{video}/{obj}"
                for video in videos
                for obj in sorted(os.listdir(os.path.join(gt_folder, video)))
                if os.path.isdir(os.path.join(gt_folder, video, obj))
            ]
        if frames_sampling_mult:
            # A video is drawn in proportion to its length.
            entries = [e for e in entries for _ in range(len(self._frames[self._video_of(e)]))]
        self.video_names = entries

    def _video_of(self, entry: str) -> str:
        return entry.split("/", 1)[0] if self.single_object_mode else entry

    def video_length(self, idx: int) -> int:
        return len(self._frames[self._video_of(self.video_names[idx])])

    def get_video(self, idx: int):
        entry = self.video_names[idx]
        mask_root = os.path.join(self.gt_folder, entry)
        if self.is_palette:
            segment_loader = PalettisedPNGSegmentLoader(mask_root)
        else:
            segment_loader = MultiplePNGSegmentLoader(mask_root, self.single_object_mode)
        frames = [VOSFrame(fid, image_path=path) for fid, path in self._frames[self._video_of(entry)]]
        return VOSVideo(entry, idx, frames), segment_loader

    def __len__(self) -> int:
        return len(self.video_names)


class SAVRawDataset(VOSRawDataset):
    """SA-V videos: frames extracted from `<video>.mp4` plus `<video>_manual.json` masklets.

    With `rm_unannotated` only frames that carry a complete annotation are listed (every `ann_every`-th
    frame of the extraction), so clips are sampled among annotated frames.
    """

    def __init__(
        self,
        img_folder: str,
        gt_folder: str,
        file_list_txt: str | Sequence[str] | None = None,
        excluded_videos_list_txt: str | Sequence[str] | None = None,
        sample_rate: int = 1,
        rm_unannotated: bool = True,
        ann_every: int = 1,
        frames_fps: int = 24,
        truncate_video: int = -1,
    ):
        _check_sampling_args(sample_rate, truncate_video)
        if not os.path.isdir(gt_folder):
            raise DatasetError(f"gt_folder {gt_folder!r} does not exist or is not a folder")
        self.img_folder = img_folder
        self.gt_folder = gt_folder
        self.sample_rate = int(sample_rate)
        self.rm_unannotated = rm_unannotated
        self.ann_every = ann_every
        self.frames_fps = frames_fps
        self.truncate_video = truncate_video
        self.video_names = select_videos(img_folder, file_list_txt, excluded_videos_list_txt)

    def get_video(self, idx: int):
        video = self.video_names[idx]
        segment_loader = JSONSegmentLoader(
            os.path.join(self.gt_folder, f"{video}_manual.json"),
            ann_every=self.ann_every,
            frames_fps=self.frames_fps,
        )
        listed = _subsample(
            list_jpeg_frames(os.path.join(self.img_folder, video), video),
            self.truncate_video,
            self.sample_rate,
        )
        if self.rm_unannotated:
            annotated = set(segment_loader.annotated_frame_ids())
            listed = [(fid, path) for fid, path in listed if fid in annotated]
        frames = [VOSFrame(fid, image_path=path) for fid, path in listed]
        return VOSVideo(video, idx, frames), segment_loader

    def __len__(self) -> int:
        return len(self.video_names)


# Upstream SAM 2 calls the SA-V reader JSONRawDataset; configs written for it keep working.
JSONRawDataset = SAVRawDataset


class SA1BRawDataset(VOSRawDataset):
    """SA-1B images seen as clips of `num_frames` copies of the image; each kept mask is one object."""

    def __init__(
        self,
        img_folder: str,
        gt_folder: str,
        file_list_txt: str | Sequence[str] | None = None,
        excluded_videos_list_txt: str | Sequence[str] | None = None,
        num_frames: int = 1,
        mask_area_frac_thresh: float = 1.1,
        uncertain_iou: float = -1,
    ):
        if not os.path.isdir(img_folder):
            raise DatasetError(f"img_folder {img_folder!r} does not exist or is not a folder")
        self.img_folder = img_folder
        self.gt_folder = gt_folder
        self.num_frames = num_frames
        self.mask_area_frac_thresh = mask_area_frac_thresh
        self.uncertain_iou = uncertain_iou
        if file_list_txt is None:
            listed = os.listdir(img_folder)
            others = [n for n in listed if os.path.splitext(n)[1].lower() in _OTHER_IMAGE_EXTENSIONS]
            if others:
                raise DatasetError(
                    f"{len(others)} image(s) in {img_folder!r} are not .jpg (e.g. {sorted(others)[0]!r}); "
                    "SA-1B training reads <name>.jpg: convert them or move them out"
                )
            names = [os.path.splitext(n)[0] for n in listed if n.endswith(".jpg")]
        else:
            names = read_name_list(file_list_txt, "file_list_txt") or []
        excluded = set(read_name_list(excluded_videos_list_txt, "excluded_videos_list_txt") or [])
        self.video_names = sorted(n for n in names if n not in excluded)
        if not self.video_names:
            raise DatasetError(f"no images selected from {img_folder!r}")

    def video_length(self, idx: int) -> int:
        return self.num_frames

    def get_video(self, idx: int):
        name = self.video_names[idx]
        image_path = os.path.join(self.img_folder, f"{name}.jpg")
        if not os.path.isfile(image_path):
            raise DatasetError(f"image {name!r}: {image_path!r} does not exist (SA-1B images must be .jpg)")
        segment_loader = SA1BSegmentLoader(
            os.path.join(self.gt_folder, f"{name}.json"),
            mask_area_frac_thresh=self.mask_area_frac_thresh,
            video_frame_path=image_path,
            uncertain_iou=self.uncertain_iou,
        )
        # SA-1B files are named sa_<int>; that integer is the image id the evaluation keys on.
        suffix = name.rsplit("_", 1)[-1]
        video_id = int(suffix) if suffix.isdigit() else idx
        frames = [VOSFrame(i, image_path=image_path) for i in range(self.num_frames)]
        return VOSVideo(name, video_id, frames), segment_loader

    def __len__(self) -> int:
        return len(self.video_names)
