"""Semi-supervised VOS inference over a data set: prompt each video with its input masks, propagate, and
write one mask PNG per frame (palette layout) or per object and frame (``per_obj_png_file``).

Behaviour follows the official ``tools/vos_inference.py`` (flags, layouts, palette reuse, the
"objects appearing later" mode that tracks each object separately from its first mask, fp32 scores, PNGs
readable by others as the umask allows). Added for data sets and clusters: videos are sharded across local
worker processes and across ``torchrun`` ranks (RANK / WORLD_SIZE); each video is written into a
temporary folder renamed when complete, so a reader never sees half-written ones; a marker beside each
finished video records the checkpoint (SHA-256), config and flags that made it, and a rerun reuses the
video only when they are the same (otherwise it is overwritten, as the official tool does); frames and
state can live on the CPU for long videos.
"""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sam2.eval.masks import MaskDataError, default_palette, read_mask_png, read_palette
from sam2.utils.atomic_io import atomic_write_text
from sam2.utils.cpu_threads import apply_cpu_threads, plan_cpu_threads
from sam2.utils.file_hashing import sha256_of_file
from sam2.utils.misc import list_jpeg_frames
from sam2.utils.sharding import round_robin_shard

logger = logging.getLogger(__name__)

# Score given to frames an object was not tracked on (before its first mask in the separate mode).
UNTRACKED_SCORE = -1024.0
TEMP_PREFIX = ".tmp-"
MARKER_SUFFIX = ".vos_inference.json"  # <output>/.<video>.vos_inference.json beside each finished video


@dataclass(frozen=True)
class VOSInferenceOptions:
    """How masks are read, tracked and written (the official tool's flags)."""

    score_thresh: float = 0.0
    use_all_masks: bool = False
    per_obj_png_file: bool = False
    track_object_appearing_later_in_video: bool = False
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False


@dataclass
class InferenceSummary:
    """What one call did: videos written, reused (same checkpoint, config and flags) and frames written."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    # torch CPU threads of each worker process (sized by sam2.utils.cpu_threads)
    cpu_threads: list[int] = field(default_factory=list)

    def merge(self, other: InferenceSummary) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.cpu_threads += other.cpu_threads
        self.frames += other.frames
        self.seconds = max(self.seconds, other.seconds)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_vos_predictor(
    sam2_cfg: str,
    sam2_checkpoint: str | os.PathLike | None,
    device: str | None = None,
    apply_postprocessing: bool = False,
    per_obj_png_file: bool = False,
    hydra_overrides_extra: Sequence[str] = (),
    vos_optimized: bool = False,
):
    """The video predictor as the official tool builds it: overlapping masks only for per-object PNGs."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [
        f"++model.non_overlap_masks={'false' if per_obj_png_file else 'true'}",
        *hydra_overrides_extra,
    ]
    return build_sam2_video_predictor(
        sam2_cfg,
        sam2_checkpoint,
        device=device or default_device(),
        apply_postprocessing=apply_postprocessing,
        hydra_overrides_extra=overrides,
        vos_optimized=vos_optimized,
    )


def frame_stems(video_dir: Path) -> list[str]:
    """Frame names without extension, in frame order (what the mask PNGs are named after)."""
    return [Path(path).stem for path in list_jpeg_frames(video_dir)]


def _undecodable_frame(video_dir: Path) -> Path | None:
    """The first JPEG frame of `video_dir` PIL cannot decode (to name it in the error), or None."""
    for path in list_jpeg_frames(video_dir):
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError):
            return Path(path)
    return None


def _per_object_input(input_dir: Path) -> bool:
    """Whether a video's input masks are per-object folders (SA-V layout) rather than palette PNGs."""
    entries = list(os.scandir(input_dir))
    if any(e.is_file() and e.name.endswith(".png") for e in entries):
        return False
    if any(e.is_dir() for e in entries):
        return True
    raise MaskDataError(f"{input_dir}: no input masks (<frame>.png or <object id>/<frame>.png)")


def _input_masks(
    input_dir: Path, frame: str, per_object: bool, required: bool
) -> tuple[dict[int, np.ndarray], list[int] | None]:
    """Binary masks by object id for one frame, and its palette (of the last object file read, as the
    official tool's); ({}, None) when absent and not required."""
    if not per_object:
        path = input_dir / f"{frame}.png"
        if not path.is_file():
            if required:
                raise MaskDataError(f"{path}: input mask not found")
            return {}, None
        ids = read_mask_png(path)
        return {int(i): ids == i for i in np.unique(ids) if i > 0}, read_palette(path)
    masks: dict[int, np.ndarray] = {}
    palette = None
    folders = sorted(p for p in input_dir.iterdir() if p.is_dir()) if input_dir.is_dir() else []
    for folder in folders:
        path = folder / f"{frame}.png"
        if not path.is_file():
            if required:
                raise MaskDataError(f"{path}: input mask not found")
            continue
        try:
            object_id = int(folder.name)
        except ValueError:
            raise MaskDataError(
                f"{folder}: per-object mask folders must be named by integer object id"
            ) from None
        masks[object_id] = read_mask_png(path) > 0
        palette = read_palette(path)
    return masks, palette


def _has_input(input_dir: Path, frame: str, per_object: bool) -> bool:
    if not per_object:
        return (input_dir / f"{frame}.png").is_file()
    return input_dir.is_dir() and any(
        (p / f"{frame}.png").is_file() for p in input_dir.iterdir() if p.is_dir()
    )


def _add_mask(predictor, state, frame_idx: int, object_id: int, mask: np.ndarray, where: Path) -> None:
    try:
        predictor.add_new_mask(inference_state=state, frame_idx=frame_idx, obj_id=object_id, mask=mask)
    except ValueError as error:
        raise MaskDataError(f"{where}: input mask of object {object_id} rejected: {error}") from None


def _save_png(path: Path, ids: np.ndarray, palette: list[int] | None) -> None:
    """An indexed PNG as the official tool saves it (PIL, mode 0666 less the umask). No temporary name:
    the video's staging folder is what gets published atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(palette if palette is not None else default_palette())
    image.save(path, format="PNG")


class _MaskWriter:
    """Writes a video's masks frame by frame into a staging folder (frames never yielded stay empty)."""

    def __init__(
        self,
        target: Path,
        frames: list[str],
        size: tuple[int, int],
        options: VOSInferenceOptions,
        per_object_input: bool,
    ):
        self.target, self.frames, self.size, self.options = target, frames, size, options
        self.per_object_input = per_object_input
        self.object_ids: list[int] = []
        self.palette: list[int] | None = None
        self.written: set[int] = set()

    def write(self, frame_idx: int, logits: dict[int, torch.Tensor]) -> None:
        name = self.frames[frame_idx]
        masks = {o: (score[0] > self.options.score_thresh).cpu().numpy() for o, score in logits.items()}
        if self.options.per_obj_png_file:
            for object_id in self.object_ids:
                mask = masks.get(object_id, np.zeros(self.size, dtype=bool))
                _save_png(
                    self.target / f"{object_id:03d}" / f"{name}.png", mask.astype(np.uint8), self.palette
                )
        else:
            ids = np.zeros(self.size, dtype=np.uint8)
            for object_id in sorted(masks, reverse=True):  # smaller ids win where masks overlap
                ids[masks[object_id]] = object_id
            _save_png(self.target / f"{name}.png", ids, self.palette)
        self.written.add(frame_idx)

    def finish(self) -> None:
        for frame_idx in range(len(self.frames)):
            if frame_idx not in self.written:
                self.write(frame_idx, {})
        self.target.mkdir(parents=True, exist_ok=True)


def _track_together(predictor, state, video: str, input_dir: Path, writer: _MaskWriter) -> None:
    """All objects of the first input frame tracked jointly (the standard DAVIS / MOSE setting); each frame
    is written as soon as it is tracked, so memory does not grow with the video."""
    options, frames = writer.options, writer.frames
    input_frames = [
        i for i, name in enumerate(frames) if _has_input(input_dir, name, writer.per_object_input)
    ]
    if not input_frames:
        raise MaskDataError(f"video {video}: no input mask for any frame in {input_dir}")
    if input_frames[0] != 0:
        # SAM 2's propagate_in_video starts at the earliest frame holding a prompt (as in the official
        # tool with --use_all_masks); nothing is tracked before it, so those frames are written empty.
        logger.warning(
            "video %s: frame %s has no input mask in %s; tracking starts at frame %s, the first with one, "
            "and the %d frame(s) before it are written empty",
            video,
            frames[0],
            input_dir,
            frames[input_frames[0]],
            input_frames[0],
        )
    if not options.use_all_masks:
        input_frames = input_frames[:1]
    known: set[int] | None = None
    for frame_idx in input_frames:
        where = input_dir / frames[frame_idx]
        masks, frame_palette = _input_masks(
            input_dir, frames[frame_idx], writer.per_object_input, required=True
        )
        writer.palette = frame_palette  # the official tool keeps the last input frame's palette
        if known is None:
            known = set(masks)
        new = sorted(set(masks) - known)
        if new:
            raise MaskDataError(
                f"{where}: object(s) {new} appear only after the first input frame; rerun with "
                "--track_object_appearing_later_in_video"
            )
        for object_id, mask in masks.items():
            _add_mask(predictor, state, frame_idx, object_id, mask, where)
    writer.object_ids = sorted(known or ())
    if not writer.object_ids:
        logger.warning("video %s: the first input frame holds no object; writing empty masks", video)
        return
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        writer.write(frame_idx, {int(o): logits[i] for i, o in enumerate(obj_ids)})


def _track_separately(predictor, state, video: str, input_dir: Path, writer: _MaskWriter) -> None:
    """Each object tracked on its own from the first frame it appears in (YouTube-VOS / LVOS setting).

    Scores are kept (fp32 on the CPU, as the official tool keeps them) until every object is tracked,
    since overlaps are resolved across objects per frame unless per-object PNGs are written.
    """
    options, frames = writer.options, writer.frames
    prompts: dict[int, dict[int, np.ndarray]] = {}
    for frame_idx, name in enumerate(frames):
        if not writer.per_object_input and not (input_dir / f"{name}.png").is_file():
            continue
        masks, frame_palette = _input_masks(input_dir, name, writer.per_object_input, required=False)
        # The official tool keeps the palette of the last frame it read (none: the default palette).
        writer.palette = frame_palette
        for object_id, mask in masks.items():
            if not mask.any() or (prompts.get(object_id) and not options.use_all_masks):
                continue
            prompts.setdefault(object_id, {})[frame_idx] = mask
    writer.object_ids = sorted(prompts)
    if not prompts:
        logger.warning("video %s: no input mask holds an object; writing empty masks", video)
        return
    scores: dict[int, dict[int, torch.Tensor]] = {}
    for object_id in writer.object_ids:
        predictor.reset_state(state)
        for frame_idx, mask in prompts[object_id].items():
            _add_mask(predictor, state, frame_idx, object_id, mask, input_dir / frames[frame_idx])
        start = min(prompts[object_id])
        for frame_idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=False):
            scores.setdefault(frame_idx, {})[object_id] = logits[0].to("cpu", torch.float32)
    for frame_idx, per_object in sorted(scores.items()):
        if not options.per_obj_png_file:
            # Joint tracking makes masks non-overlapping inside the model; separate runs are made so here.
            untracked = torch.full((1, *writer.size), UNTRACKED_SCORE)
            stacked = torch.stack([per_object.get(o, untracked) for o in writer.object_ids])
            stacked = predictor._apply_non_overlapping_constraints(stacked)
            per_object = {o: stacked[i] for i, o in enumerate(writer.object_ids) if o in per_object}
        writer.write(frame_idx, per_object)


def stale_staging_dirs(output_root: Path, video: str) -> list[Path]:
    """Staging folders of `video` left by an interrupted run (shards never share a video).

    Only `<TEMP_PREFIX><video>-<pid>` matches: a plain glob would also take `dog-agility`'s folders for
    `dog`'s and delete another worker's video in progress.
    """
    prefix = f"{TEMP_PREFIX}{video}-"
    return [
        path for path in output_root.glob(f"{glob.escape(prefix)}*") if path.name[len(prefix) :].isdigit()
    ]


def marker_path(output_root: Path, video: str) -> Path:
    """Where the record of what made `<output_root>/<video>` lives (beside it, hidden)."""
    return output_root / f".{video}{MARKER_SUFFIX}"


def run_fingerprint(
    sam2_cfg: str,
    sam2_checkpoint: str | os.PathLike | None,
    options: VOSInferenceOptions,
    apply_postprocessing: bool,
    hydra_overrides_extra: Sequence[str],
    vos_optimized: bool,
) -> dict[str, Any]:
    """What decides a video's masks: the checkpoint's SHA-256, the config with its overrides, the flags."""
    return {
        "checkpoint_sha256": sha256_of_file(sam2_checkpoint) if sam2_checkpoint is not None else None,
        "sam2_cfg": sam2_cfg,
        "hydra_overrides": list(hydra_overrides_extra),
        "apply_postprocessing": apply_postprocessing,
        "vos_optimized": vos_optimized,
        "options": asdict(options),
    }


def reuse_decision(output_root: Path, video: str, fingerprint: dict[str, Any]) -> str | None:
    """None when `<output_root>/<video>` was made by this fingerprint (reuse it); else why it is (re)done:
    "new" when there is no output yet."""
    if not (output_root / video).is_dir():
        return "new"
    marker = marker_path(output_root, video)
    try:
        recorded = json.loads(marker.read_text())
    except FileNotFoundError:
        return f"no marker {marker.name} records what made it"
    except (OSError, ValueError) as error:
        return f"marker {marker.name} is unreadable ({error})"
    if recorded == fingerprint:
        return None
    changed = sorted(k for k in set(recorded) | set(fingerprint) if recorded.get(k) != fingerprint.get(k))
    return f"made with another {', '.join(changed)}"


def _publish(staging: Path, target: Path) -> None:
    """Replace `target` (an older output, if any) with the finished `staging` folder."""
    old = None
    if target.exists():
        old = target.with_name(f"{TEMP_PREFIX}old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def infer_video(
    predictor,
    base_video_dir: str | os.PathLike,
    input_mask_dir: str | os.PathLike,
    output_mask_dir: str | os.PathLike,
    video: str,
    options: VOSInferenceOptions = VOSInferenceOptions(),
    fingerprint: dict[str, Any] | None = None,
) -> int:
    """Runs one video and publishes ``<output_mask_dir>/<video>`` atomically (replacing an older output,
    as the official tool overwrites it); returns the frames written. With `fingerprint`, a marker beside
    the video records it once the video is published.

    Input masks may be palette PNGs or per-object folders (detected per video); `options.per_obj_png_file`
    picks the output layout.

    Raises MaskDataError (naming the video and file) for missing or unusable input masks, and the
    frame loader's FileNotFoundError / ValueError for a missing or badly named frame folder.
    """
    output_root = Path(output_mask_dir)
    frames = frame_stems(Path(base_video_dir) / video)
    input_dir = Path(input_mask_dir) / video
    if not input_dir.is_dir():
        raise MaskDataError(f"video {video}: input mask folder {input_dir} not found")
    staging = output_root / f"{TEMP_PREFIX}{video}-{os.getpid()}"
    for stale in stale_staging_dirs(output_root, video):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        state = predictor.init_state(
            video_path=str(Path(base_video_dir) / video),
            offload_video_to_cpu=options.offload_video_to_cpu,
            offload_state_to_cpu=options.offload_state_to_cpu,
        )
    except (OSError, SyntaxError, RuntimeError) as err:  # PIL's errors (or the loader's, wrapping them)
        cause = err.__cause__ if isinstance(err, RuntimeError) else err
        if isinstance(err, FileNotFoundError) or not isinstance(cause, (OSError, SyntaxError)):
            raise
        raise MaskDataError(
            f"video {video}: frame {_undecodable_frame(Path(base_video_dir) / video) or '?'} cannot be "
            f"decoded ({cause}); re-extract the video or leave it out (--video_list_file)"
        ) from None
    size = (state["video_height"], state["video_width"])
    writer = _MaskWriter(staging, frames, size, options, _per_object_input(input_dir))
    track = _track_separately if options.track_object_appearing_later_in_video else _track_together
    marker = marker_path(output_root, video)
    try:
        track(predictor, state, video, input_dir, writer)
        writer.finish()
        marker.unlink(missing_ok=True)  # never a marker beside masks it does not describe
        _publish(staging, output_root / video)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if fingerprint is not None:
        atomic_write_text(marker, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
        os.chmod(marker, 0o666 & ~_umask())
    return len(frames)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def list_videos(
    base_video_dir: str | os.PathLike, video_list_file: str | os.PathLike | None = None
) -> list[str]:
    """Videos named in the list file (one per line), or every frame folder under `base_video_dir`, sorted."""
    base = Path(base_video_dir)
    if video_list_file is not None:
        names = [line.strip() for line in Path(video_list_file).read_text().splitlines() if line.strip()]
        missing = [name for name in names if not (base / name).is_dir()]
        if missing:
            raise MaskDataError(f"videos listed in {video_list_file} but not found under {base}: {missing}")
        return sorted(dict.fromkeys(names))
    if not base.is_dir():
        raise MaskDataError(f"{base}: video folder root not found")
    return sorted(
        entry.name for entry in os.scandir(base) if entry.is_dir() and not entry.name.startswith(".")
    )


def _distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


@dataclass(frozen=True)
class _WorkerJob:
    sam2_cfg: str
    sam2_checkpoint: str | None
    base_video_dir: str
    input_mask_dir: str
    output_mask_dir: str
    videos: tuple[str, ...]
    options: VOSInferenceOptions
    device: str
    apply_postprocessing: bool
    hydra_overrides_extra: tuple[str, ...]
    vos_optimized: bool
    fingerprint: dict[str, Any]
    position: int
    threads: int | None


def _run_worker(job: _WorkerJob) -> InferenceSummary:
    """One process's share: builds its own predictor and runs its videos in order."""
    summary = InferenceSummary(cpu_threads=[apply_cpu_threads(job.threads)])
    started = time.perf_counter()
    output_root = Path(job.output_mask_dir)
    todo = []
    for video in job.videos:
        reason = reuse_decision(output_root, video, job.fingerprint)
        if reason is None:
            summary.skipped.append(video)
        else:
            todo.append(video)
            if reason != "new":
                logger.info(
                    "video %s: overwriting the existing output under %s (%s)", video, output_root, reason
                )
    if summary.skipped:
        logger.info(
            "reusing %d video(s) under %s, made with the same checkpoint, config and flags: %s",
            len(summary.skipped),
            output_root,
            ", ".join(summary.skipped),
        )
    if todo:
        predictor = build_vos_predictor(
            job.sam2_cfg,
            job.sam2_checkpoint,
            device=job.device,
            apply_postprocessing=job.apply_postprocessing,
            per_obj_png_file=job.options.per_obj_png_file,
            hydra_overrides_extra=job.hydra_overrides_extra,
            vos_optimized=job.vos_optimized,
        )
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if job.device.startswith("cuda") else nullcontext()
        )
        with autocast:
            for video in tqdm(
                todo, desc=f"vos inference [{job.position}]", unit="video", position=job.position
            ):
                summary.frames += infer_video(
                    predictor,
                    job.base_video_dir,
                    job.input_mask_dir,
                    job.output_mask_dir,
                    video,
                    job.options,
                    fingerprint=job.fingerprint,
                )
                summary.written.append(video)
    summary.seconds = time.perf_counter() - started
    return summary


def run_vos_inference(
    sam2_cfg: str,
    sam2_checkpoint: str | os.PathLike | None,
    base_video_dir: str | os.PathLike,
    input_mask_dir: str | os.PathLike,
    output_mask_dir: str | os.PathLike,
    videos: Sequence[str] | None = None,
    options: VOSInferenceOptions = VOSInferenceOptions(),
    device: str | None = None,
    num_workers: int = 1,
    apply_postprocessing: bool = False,
    hydra_overrides_extra: Sequence[str] = (),
    vos_optimized: bool = False,
) -> InferenceSummary:
    """Writes predicted masks for `videos` (default: every folder under `base_video_dir`).

    Under torchrun each rank takes its share of the sorted video list; `num_workers` local processes
    split that share again (each builds its own model; on CUDA they spread over the visible GPUs).
    A video whose output exists is reused when its marker records this checkpoint's SHA-256, config and
    flags, and overwritten otherwise (logged either way). Raises MaskDataError for unusable inputs; a
    worker's error reaches the caller.
    """
    names = sorted(dict.fromkeys(videos)) if videos is not None else list_videos(base_video_dir)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    rank, world_size, local_rank = _distributed_rank()
    device = device or default_device()
    Path(output_mask_dir).mkdir(parents=True, exist_ok=True)
    shards = world_size * num_workers
    fingerprint = run_fingerprint(
        sam2_cfg, sam2_checkpoint, options, apply_postprocessing, hydra_overrides_extra, vos_optimized
    )
    threads = None
    if device == "cpu":
        # Every process of this node shares its cores: the local workers of each torchrun rank here.
        local_procs = num_workers * (int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if world_size > 1 else 1)
        threads = plan_cpu_threads(local_procs, "VOS inference process(es)", log=local_rank == 0)
    jobs = []
    for worker in range(num_workers):
        worker_device = device
        if device == "cuda" and torch.cuda.is_available():
            gpu = local_rank if world_size > 1 else worker % torch.cuda.device_count()
            worker_device = f"cuda:{gpu}"
        jobs.append(
            _WorkerJob(
                sam2_cfg=sam2_cfg,
                sam2_checkpoint=str(sam2_checkpoint) if sam2_checkpoint is not None else None,
                base_video_dir=str(base_video_dir),
                input_mask_dir=str(input_mask_dir),
                output_mask_dir=str(output_mask_dir),
                videos=tuple(round_robin_shard(names, rank * num_workers + worker, shards)),
                options=options,
                device=worker_device,
                apply_postprocessing=apply_postprocessing,
                hydra_overrides_extra=tuple(hydra_overrides_extra),
                vos_optimized=vos_optimized,
                fingerprint=fingerprint,
                position=worker,
                threads=threads,
            )
        )
    summary = InferenceSummary()
    if num_workers == 1:
        summary.merge(_run_worker(jobs[0]))
        return summary
    context = multiprocessing.get_context("spawn")  # CUDA and torch threads do not survive fork
    with context.Pool(num_workers) as pool:
        for part in pool.imap_unordered(_run_worker, jobs):
            summary.merge(part)
    return summary
