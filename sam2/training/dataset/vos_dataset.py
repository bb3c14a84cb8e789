"""VOSDataset: raw video -> sampled clip -> frames and masks -> transforms -> one VideoDatapoint."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset

from sam2.training.dataset.errors import DatasetError, SamplingError
from sam2.training.dataset.vos_raw_dataset import VOSFrame, VOSRawDataset
from sam2.training.dataset.vos_sampler import VOSSampler, short_clip_message
from sam2.training.dataset.vos_segment_loader import JSONSegmentLoader
from sam2.training.utils.data_utils import Frame, Object, VideoDatapoint

logger = logging.getLogger(__name__)

# Videos tried, in training, before a run of sampling failures is reported as an error.
MAX_RETRIES = 100
# Short clips listed in one error message.
_MAX_LISTED = 10


class VOSDataset(Dataset):
    """A map-style data set of transformed clips, one entry per video of `video_dataset`.

    transforms: callables `t(datapoint, epoch=...)` applied in order (e.g. one ComposeAPI).
    training: when True a video that yields no clip with a visible object in its first frame is
        replaced by another random video (logged); when False that is an error.
    multiplier: per-video repeat factor, applied by wrapping the data set in `RepeatFactorWrapper`.
    always_target: give every sampled object a mask on every frame (empty where absent); when False the
        object is left out of frames where it has no annotation.
    target_segments_available: when False only the first frame's masks are read (e.g. a val split
        annotated on its first frame only); other frames get empty masks.
    Data errors (short clips, non-.jpg frames, missing masks) raise DatasetError naming the video.

    drop_objects_emptied_on_first_frame (training only; off by default, as upstream keeps such objects
    and prompts them with the empty mask, a background click or the empty mask's box). The sampler picks
    objects visible in the clip's first frame, the frame every initial prompt (mask, click or box) is given
    on. The transforms can still wipe a tiny object out there: a 1-pixel object of a 1920x1080 frame is
    gone after the resize to 1024, the mosaic shrinks masks by the grid size. With the option such an
    object is dropped from the whole clip, since
    - a click or box cannot be simulated on an empty mask (SAM2Train's require_objects_on_first_frame
      then raises, which is meant for really bad input, not bad luck);
    - keeping it teaches "nothing to track here" for an object that the later frames' ground truth may
      still show, a contradictory target that dropping avoids;
    - it restores the sampler's promise (visible in the first frame) after the transforms, for mask and
      click batches alike.
    Each drop is logged naming video, object and frame: as a warning the first time in a process (the
    main process, or each loader worker), at DEBUG afterwards. A clip left with no object is replaced by
    another random video, as a clip without a visible object is at sampling. Evaluation
    (`training=False`) keeps every object: the val set is scored as listed, and its default prompt, the
    first-frame mask, may be empty.
    """

    def __init__(
        self,
        transforms: Sequence[Callable] | Callable,
        training: bool,
        video_dataset: VOSRawDataset,
        sampler: VOSSampler,
        multiplier: float,
        always_target: bool = True,
        target_segments_available: bool = True,
        drop_objects_emptied_on_first_frame: bool = False,
    ):
        self._transforms = list(transforms) if isinstance(transforms, Sequence) else [transforms]
        self.training = training
        self.video_dataset = video_dataset
        self.sampler = sampler
        self.always_target = always_target
        self.target_segments_available = target_segments_available
        self.drop_objects_emptied_on_first_frame = drop_objects_emptied_on_first_frame
        if len(video_dataset) == 0:
            raise DatasetError(f"{type(video_dataset).__name__} lists no videos")
        self.repeat_factors = torch.full((len(video_dataset),), float(multiplier), dtype=torch.float32)
        self.curr_epoch = 0
        self._check_clip_lengths()
        logger.info("%s: %d videos", type(video_dataset).__name__, len(video_dataset))

    def _check_clip_lengths(self) -> None:
        """Fail at construction, not in a worker, when the raw data set already knows a clip is too short."""
        needed = getattr(self.sampler, "num_frames", None)
        if needed is None:
            return
        short = []
        for idx in range(len(self.video_dataset)):
            length = self.video_dataset.video_length(idx)
            if length is not None and length < needed:
                short.append((self.video_dataset.video_names[idx], length))
        if not short:
            return
        name, length = short[0]
        listed = ", ".join(f"{n!r} ({n_frames})" for n, n_frames in short[:_MAX_LISTED])
        more = f" and {len(short) - _MAX_LISTED} more" if len(short) > _MAX_LISTED else ""
        raise DatasetError(
            f"{len(short)} video(s) are shorter than num_frames={needed}: {listed}{more}. "
            + short_clip_message(name, length, needed)
        )

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the sampler and transforms (both receive `epoch=`)."""
        self.curr_epoch = epoch

    def _get_datapoint(self, idx: int) -> VideoDatapoint:
        if isinstance(idx, torch.Tensor):
            idx = int(idx.item())
        failures = []
        for _ in range(MAX_RETRIES):
            video, segment_loader = self.video_dataset.get_video(idx)
            try:
                sampled = self.sampler.sample(video, segment_loader, epoch=self.curr_epoch)
            except SamplingError as err:
                if not self.training:
                    raise
                failures.append(video.video_name)
                logger.warning("%s; drawing another video", err)
                idx = random.randrange(len(self.video_dataset))
                continue
            datapoint = self.construct(video, sampled, segment_loader)
            for transform in self._transforms:
                datapoint = transform(datapoint, epoch=self.curr_epoch)
            if (
                not self.training
                or not self.drop_objects_emptied_on_first_frame
                or drop_objects_emptied_on_first_frame(datapoint, video.video_name)
            ):
                return datapoint
            failures.append(video.video_name)
            _log_vanished(
                "video %r: every sampled object vanished from the clip's first frame (frame id %d) in the "
                "transforms; drawing another video",
                video.video_name,
                sampled.frames[0].frame_idx,
            )
            idx = random.randrange(len(self.video_dataset))
        raise SamplingError(
            f"{MAX_RETRIES} videos in a row gave no clip with an object visible in its first frame before "
            f"and after the transforms (e.g. {sorted(set(failures))[:_MAX_LISTED]}); check the masks, or "
            "the transforms (scratch.resolution, mosaic) for objects too small to survive them"
        )

    def construct(self, video, sampled, segment_loader) -> VideoDatapoint:
        """Load the sampled frames and the sampled objects' masks (uint8 [H, W]) into a VideoDatapoint."""
        images = load_images(sampled.frames, video.video_name)
        width, height = images[0].size
        out_frames = []
        for position, (frame, image) in enumerate(zip(sampled.frames, images, strict=True)):
            if image.size != (width, height):
                raise DatasetError(
                    f"video {video.video_name!r}: frame {frame.image_path!r} is {image.size[0]}x"
                    f"{image.size[1]} but the clip's first frame is {width}x{height}"
                )
            if position > 0 and not self.target_segments_available:
                segments = {}
            elif isinstance(segment_loader, JSONSegmentLoader):
                segments = segment_loader.load(frame.frame_idx, obj_ids=sampled.object_ids)
            else:
                segments = segment_loader.load(frame.frame_idx)
            objects = []
            for obj_id in sampled.object_ids:
                segment = segments.get(obj_id)
                if segment is None:
                    if not self.always_target:
                        continue
                    segment = torch.zeros(height, width, dtype=torch.uint8)
                elif tuple(segment.shape) != (height, width):
                    raise DatasetError(
                        f"video {video.video_name!r}, frame {frame.frame_idx}: mask of object {obj_id} is "
                        f"{segment.shape[1]}x{segment.shape[0]} but the frame is {width}x{height}; "
                        "re-export the masks at frame size"
                    )
                objects.append(
                    Object(
                        object_id=int(obj_id), frame_index=frame.frame_idx, segment=segment.to(torch.uint8)
                    )
                )
            out_frames.append(Frame(data=image, objects=objects))
        return VideoDatapoint(frames=out_frames, video_id=video.video_id, size=(height, width))

    def __getitem__(self, idx: int) -> VideoDatapoint:
        return self._get_datapoint(idx)

    def __len__(self) -> int:
        return len(self.video_dataset)


_warned_vanished = False


def _log_vanished(message: str, *args) -> None:
    """A warning the first time in this process, DEBUG afterwards (a loader worker is a process)."""
    global _warned_vanished
    if _warned_vanished:
        logger.debug(message, *args)
        return
    _warned_vanished = True
    logger.warning(message + " (shown once per process; later ones are logged at DEBUG)", *args)


def drop_objects_emptied_on_first_frame(datapoint: VideoDatapoint, video_name: str) -> bool:
    """Remove, from every frame, the objects whose mask on the first frame is empty (or absent);
    returns whether an object is left. See VOSDataset for why."""
    first = datapoint.frames[0]
    kept = {obj.object_id for obj in first.objects if obj.segment is not None and bool(obj.segment.any())}
    for obj in first.objects:
        if obj.object_id not in kept:
            _log_vanished(
                "video %r: object %d vanished from the clip's first frame (frame id %d) in the transforms "
                "(too small for the resize or mosaic?); it is not tracked in this clip",
                video_name,
                obj.object_id,
                obj.frame_index,
            )
    if len(kept) < len(first.objects):
        for frame in datapoint.frames:
            frame.objects = [obj for obj in frame.objects if obj.object_id in kept]
    return bool(kept)


def load_images(frames: Sequence[VOSFrame], video_name: str) -> list[PILImage.Image]:
    """RGB PIL images of the frames; a path repeated in the clip (SA-1B) is decoded once and copied."""
    decoded: dict[str, PILImage.Image] = {}
    images = []
    for frame in frames:
        if frame.data is not None:
            images.append(_tensor_to_pil(frame.data))
            continue
        if frame.image_path not in decoded:
            try:
                with PILImage.open(frame.image_path) as img:
                    decoded[frame.image_path] = img.convert("RGB")
            except OSError as err:
                raise DatasetError(
                    f"video {video_name!r}: cannot decode frame {frame.image_path!r} ({err}); "
                    "re-extract the frames or exclude the video"
                ) from err
            images.append(decoded[frame.image_path])
        else:
            images.append(decoded[frame.image_path].copy())
    return images


def _tensor_to_pil(data: torch.Tensor) -> PILImage.Image:
    """float [3, H, W] in [0, 1] -> PIL RGB."""
    array = (data.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PILImage.fromarray(array)
