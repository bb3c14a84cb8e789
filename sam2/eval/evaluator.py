"""J&F evaluation of predicted VOS masks against ground truth, with the two published protocols.

- ``sav`` (default; SAM 2's SA-V evaluator, itself vos-benchmark): frames are the ground truth's PNGs in
  sorted order, the first and last skipped unless told otherwise; an object is scored from its first
  evaluated frame in the ground truth or the prediction up to the last evaluated frame; only objects seen
  in an evaluated ground-truth frame are reported; any id (255 included) is an object.
- ``davis2017`` (DAVIS 2017 semi-supervised toolkit): objects are 1..N, N the largest id of the first
  ground-truth frame with 255 read as 0 (void); they are scored on every evaluated frame; a predicted id
  above N is an error.

Per object the score is the mean over its evaluated frames; global J (F) is the mean over all (video,
object) pairs and J&F their average. Videos run in a process pool; a worker's error reaches the caller.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from sam2.eval.masks import MaskDataError, VideoMasks
from sam2.eval.metrics import score_frame
from sam2.utils.atomic_io import atomic_open

Protocol = Literal["sav", "davis2017"]
PROTOCOLS: tuple[str, ...] = ("sav", "davis2017")
DAVIS_VOID_ID = 255

logger = logging.getLogger(__name__)


@dataclass
class ObjectResult:
    """One object's per-frame J and F (fractions) over the frames it is evaluated on."""

    frames: list[str]
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray

    @property
    def j(self) -> float:
        return float(np.mean(self.j_per_frame))

    @property
    def f(self) -> float:
        return float(np.mean(self.f_per_frame))


@dataclass
class VideoResult:
    """Scores of one video; J, F and J&F are None when no object was evaluated (e.g. a two-frame video)."""

    name: str
    num_frames: int
    objects: dict[int, ObjectResult] = field(default_factory=dict)

    @property
    def j(self) -> float | None:
        return float(np.mean([o.j for o in self.objects.values()])) if self.objects else None

    @property
    def f(self) -> float | None:
        return float(np.mean([o.f for o in self.objects.values()])) if self.objects else None

    @property
    def jf(self) -> float | None:
        return (self.j + self.f) / 2 if self.objects else None  # type: ignore[operator]


@dataclass
class EvaluationResult:
    """All videos' scores; global means are over (video, object) pairs."""

    protocol: str
    skip_first_and_last: bool
    videos: dict[str, VideoResult]

    def _pairs(self) -> list[ObjectResult]:
        return [obj for video in self.videos.values() for obj in video.objects.values()]

    @property
    def j(self) -> float:
        return float(np.mean([o.j for o in self._pairs()]))

    @property
    def f(self) -> float:
        return float(np.mean([o.f for o in self._pairs()]))

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    @property
    def num_frames(self) -> int:
        """Evaluated frames summed over videos (the throughput unit of the benchmark)."""
        return sum(video.num_frames for video in self.videos.values())

    def to_dict(self) -> dict[str, Any]:
        """The `evaluate` JSON: J&F, J, F and per video / per object scores, all in percent."""

        def percent(value: float | None) -> float | None:
            return None if value is None else 100.0 * value

        per_video = {
            name: {
                "J&F": percent(video.jf),
                "J": percent(video.j),
                "F": percent(video.f),
                "per_object": {
                    str(object_id): {"J": percent(obj.j), "F": percent(obj.f)}
                    for object_id, obj in sorted(video.objects.items())
                },
            }
            for name, video in sorted(self.videos.items())
        }
        return {"J&F": percent(self.jf), "J": percent(self.j), "F": percent(self.f), "per_video": per_video}


def _davis_object_count(gt: VideoMasks) -> int:
    """N of the DAVIS 2017 toolkit: the largest id in the first ground-truth frame, void (255) read as 0."""
    first = gt.frames[0]
    if gt.layout == "palette":
        ids = gt.read_ids(first)
        ids = ids[ids != DAVIS_VOID_ID]
        return int(ids.max()) if ids.size else 0
    present = [object_id for object_id, mask in gt.read_objects(first, required=False).items() if mask.any()]
    return max(present, default=0)


def _check_shapes(
    gt_shape: tuple[int, ...], pred_shape: tuple[int, ...], gt_path: Path, pred_path: Path
) -> None:
    if gt_shape != pred_shape:
        raise MaskDataError(
            f"size mismatch: ground truth {gt_path} is {gt_shape[1]}x{gt_shape[0]} but prediction {pred_path} "
            f"is {pred_shape[1]}x{pred_shape[0]} (WxH); predictions must be written at the frame size"
        )


def _too_high(pred_path: Path, bad_ids: Iterable[int], n_objects: int) -> MaskDataError:
    return MaskDataError(
        f"{pred_path}: predicted object id(s) {sorted(bad_ids)} exceed the {n_objects} objects of the first "
        "ground-truth frame; the davis2017 protocol only scores ids 1..N"
    )


FrameRow = dict[int, tuple[float, float, bool, bool]]


def _score_palette_pair(
    gt: VideoMasks, pred: VideoMasks, frame: str, protocol: str, n_objects: int
) -> FrameRow:
    pred_path = pred.root / frame
    if not pred_path.is_file():
        raise MaskDataError(f"{pred_path}: prediction missing for ground-truth frame {gt.root / frame}")
    gt_ids, pred_ids = gt.read_ids(frame), pred.read_ids(frame)
    _check_shapes(gt_ids.shape, pred_ids.shape, gt.root / frame, pred_path)
    if protocol == "davis2017":
        gt_ids = np.where((gt_ids == DAVIS_VOID_ID) | (gt_ids > n_objects), 0, gt_ids).astype(gt_ids.dtype)
        if pred_ids.max(initial=0) > n_objects:
            raise _too_high(pred_path, [int(i) for i in np.unique(pred_ids) if i > n_objects], n_objects)
    scores = score_frame(gt_ids, pred_ids)
    return {
        int(i): (float(j), float(f), bool(g), bool(p))
        for i, j, f, g, p in zip(scores.ids, scores.j, scores.f, scores.in_gt, scores.in_pred, strict=True)
    }


def _score_object_pair(
    gt: VideoMasks, pred: VideoMasks, frame: str, protocol: str, n_objects: int
) -> FrameRow:
    """Object by object, for when either side is in the per-object layout (objects may overlap there)."""
    if pred.layout == "palette" and not (pred.root / frame).is_file():
        raise MaskDataError(f"{pred.root / frame}: prediction missing for ground-truth frame of {gt.root}")
    gt_objects = gt.read_objects(frame)
    pred_objects = pred.read_objects(frame)
    if protocol == "davis2017":
        gt_objects = {i: m for i, m in gt_objects.items() if 1 <= i <= n_objects}
        bad = [i for i, m in pred_objects.items() if i > n_objects and m.any()]
        if bad:
            raise _too_high(pred.root, bad, n_objects)
    row: FrameRow = {}
    for object_id in sorted(set(gt_objects) | set(pred_objects)):
        gt_mask, pred_mask = gt_objects.get(object_id), pred_objects.get(object_id)
        reference = gt_mask if gt_mask is not None else pred_mask
        assert reference is not None
        if gt_mask is not None and pred_mask is not None:
            _check_shapes(gt_mask.shape, pred_mask.shape, gt.root / frame, pred.root / f"{object_id}/{frame}")
        gt_mask = gt_mask if gt_mask is not None else np.zeros_like(reference)
        pred_mask = pred_mask if pred_mask is not None else np.zeros_like(reference)
        scores = score_frame(gt_mask, pred_mask)
        if scores.ids.size:
            row[object_id] = (
                float(scores.j[0]),
                float(scores.f[0]),
                bool(scores.in_gt[0]),
                bool(scores.in_pred[0]),
            )
    return row


def evaluate_video(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    protocol: Protocol = "sav",
    skip_first_and_last: bool = True,
) -> VideoResult:
    """Scores one video folder pair. Raises MaskDataError naming the file at fault."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    gt = VideoMasks.open(gt_dir)
    if not Path(pred_dir).is_dir():
        raise MaskDataError(f"{pred_dir}: prediction folder missing for video {Path(gt_dir).name}")
    pred = VideoMasks.open(pred_dir)
    frames = list(gt.frames)
    evaluated = frames[1:-1] if skip_first_and_last else frames
    n_objects = _davis_object_count(gt) if protocol == "davis2017" else 0
    score_pair = _score_palette_pair if gt.layout == pred.layout == "palette" else _score_object_pair
    rows = [score_pair(gt, pred, frame, protocol, n_objects) for frame in evaluated]

    if protocol == "davis2017":
        spans = {object_id: 0 for object_id in range(1, n_objects + 1)} if evaluated else {}
    else:
        first_seen: dict[int, int] = {}
        in_gt: set[int] = set()
        for index, row in enumerate(rows):
            for object_id, (_, _, gt_has, pred_has) in row.items():
                if gt_has or pred_has:
                    first_seen.setdefault(object_id, index)
                if gt_has:
                    in_gt.add(object_id)
        spans = {object_id: first_seen[object_id] for object_id in sorted(in_gt)}

    result = VideoResult(name=Path(gt_dir).name, num_frames=len(evaluated))
    for object_id, start in spans.items():
        # An object absent from both masks of a frame scores J = F = 1 there.
        pairs = [row.get(object_id, (1.0, 1.0, False, False)) for row in rows[start:]]
        result.objects[object_id] = ObjectResult(
            frames=evaluated[start:],
            j_per_frame=np.array([p[0] for p in pairs], dtype=np.float64),
            f_per_frame=np.array([p[1] for p in pairs], dtype=np.float64),
        )
    if not result.objects:
        logger.warning(
            "video %s: no object evaluated (%d evaluated frames of %d)",
            result.name,
            len(evaluated),
            len(frames),
        )
    return result


def write_metrics_json(result: EvaluationResult, path: str | os.PathLike) -> None:
    """Writes ``result.to_dict()`` as JSON through a temp file and a rename (readers never see half a file)."""
    with atomic_open(path, "w") as stream:
        json.dump(result.to_dict(), stream, indent=2)


def _available_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def read_video_list(path: str | os.PathLike) -> list[str]:
    """Video names, one per line; blank lines and surrounding spaces ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise MaskDataError(f"{path}: cannot read the video list ({error})") from None
    return [line.strip() for line in lines if line.strip()]


def _list_videos(gt_root: Path, pred_root: Path, videos: Sequence[str] | None) -> list[str]:
    if not gt_root.is_dir():
        raise MaskDataError(f"{gt_root}: ground-truth root not found")
    if not pred_root.is_dir():
        raise MaskDataError(f"{pred_root}: prediction root not found")
    if videos is None:
        names = sorted(e.name for e in os.scandir(gt_root) if e.is_dir() and not e.name.startswith("."))
    else:
        names = list(dict.fromkeys(videos))
        unknown = [name for name in names if not (gt_root / name).is_dir()]
        if unknown:
            raise MaskDataError(f"videos not found under the ground-truth root {gt_root}: {unknown}")
    if not names:
        raise MaskDataError(f"{gt_root}: no video folders to evaluate")
    missing = [name for name in names if not (pred_root / name).is_dir()]
    if missing:
        raise MaskDataError(f"prediction folders missing under {pred_root} for videos: {missing}")
    return names


def _pool_context() -> multiprocessing.context.BaseContext:
    # Not fork: callers (the pipeline, tests) may hold threads, and a forked child can deadlock on them.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def evaluate(
    gt_root: str | os.PathLike,
    pred_root: str | os.PathLike,
    videos: Sequence[str] | None = None,
    protocol: Protocol = "sav",
    skip_first_and_last: bool = True,
    num_processes: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Scores every video (all ground-truth folders, or `videos`) and aggregates J, F and J&F.

    `num_processes` None uses every CPU; 1 runs in this process. Raises MaskDataError naming the video or
    file at fault (missing prediction folders are found before any work starts), and when no (video,
    object) pair could be scored at all.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    gt_path, pred_path = Path(gt_root), Path(pred_root)
    names = _list_videos(gt_path, pred_path, videos)
    workers = min(num_processes or _available_cpus(), len(names))
    results: dict[str, VideoResult] = {}
    bar = tqdm(total=len(names), desc="evaluate", unit="video", disable=not progress)
    if workers <= 1:
        for name in names:
            results[name] = evaluate_video(gt_path / name, pred_path / name, protocol, skip_first_and_last)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            pending = {
                pool.submit(
                    evaluate_video, gt_path / name, pred_path / name, protocol, skip_first_and_last
                ): name
                for name in names
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        name = pending.pop(future)
                        results[name] = future.result()
                        bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    evaluation = EvaluationResult(protocol, skip_first_and_last, {name: results[name] for name in names})
    if not evaluation._pairs():
        raise MaskDataError(
            f"no (video, object) pair could be scored under {gt_path}: videos have no objects in their "
            "evaluated frames (too short to skip the first and last frame? see --do_not_skip_first_and_last_frame)"
        )
    return evaluation
