"""A Markdown report of an evaluation for people: per-video table, bar chart, worst-frame overlays.

Written into a folder (``report.md`` plus PNGs) for the run folder, and returned as text for a KFP
Markdown artifact; with ``embed_images`` the images are inlined as base64 data URIs so the text stands
alone (the KFP UI does not resolve relative image paths).
"""

from __future__ import annotations

import base64
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sam2.eval.evaluator import EvaluationResult, VideoResult  # noqa: E402
from sam2.eval.masks import MaskDataError, VideoMasks, default_palette  # noqa: E402
from sam2.utils.atomic_io import atomic_write_bytes  # noqa: E402

logger = logging.getLogger(__name__)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class WorstFrame:
    """A frame picked for an overlay: its video, file name and mean J over the objects scored there."""

    video: str
    frame: str
    mean_j: float
    per_object_j: dict[int, float]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def worst_frames(video: VideoResult, count: int) -> list[WorstFrame]:
    """The `count` frames with the lowest mean J over the objects evaluated on them."""
    per_frame: dict[str, dict[int, float]] = {}
    for object_id, obj in video.objects.items():
        for name, j in zip(obj.frames, obj.j_per_frame, strict=True):
            per_frame.setdefault(name, {})[object_id] = float(j)
    ranked = sorted(per_frame.items(), key=lambda item: (np.mean(list(item[1].values())), item[0]))
    return [
        WorstFrame(video.name, name, float(np.mean(list(js.values()))), js) for name, js in ranked[:count]
    ]


def bar_chart_png(result: EvaluationResult) -> bytes:
    """Per-video J&F as a horizontal bar chart, worst at the top, with the global J&F as a line."""
    scored = sorted(
        ((name, video.jf) for name, video in result.videos.items() if video.jf is not None),
        key=lambda item: item[1],
    )
    height = max(2.5, 0.28 * len(scored) + 1.2)
    figure, axes = plt.subplots(figsize=(7.5, height), dpi=100)
    try:
        names = [name for name, _ in scored]
        values = [100 * jf for _, jf in scored]
        axes.barh(range(len(values)), values, color="#4C72B0")
        axes.set_yticks(range(len(values)), labels=names, fontsize=8)
        axes.invert_yaxis()
        axes.axvline(
            100 * result.jf, color="#C44E52", linestyle="--", label=f"global J&F {100 * result.jf:.1f}"
        )
        axes.set_xlim(0, 100)
        axes.set_xlabel("J&F (%)")
        axes.set_title(f"Per-video J&F ({result.protocol} protocol)")
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _id_map(masks: VideoMasks, frame: str) -> np.ndarray:
    """An id map in either layout; per-object masks are painted largest id first so small ids stay on top."""
    if masks.layout == "palette":
        return masks.read_ids(frame)
    objects = masks.read_objects(frame, required=False)
    if not objects:
        raise MaskDataError(f"{masks.root}: no per-object mask for frame {frame}")
    shape = next(iter(objects.values())).shape
    ids = np.zeros(shape, dtype=np.int64)
    for object_id in sorted(objects, reverse=True):
        ids[objects[object_id] != 0] = object_id
    return ids


def _frame_image(image_root: Path | None, video: str, frame: str, shape: tuple[int, int]) -> np.ndarray:
    """The RGB video frame for a mask, or a mid-gray canvas when no frame folder is known or found."""
    if image_root is not None:
        stem = Path(frame).stem
        for suffix in FRAME_SUFFIXES:
            path = image_root / video / f"{stem}{suffix}"
            if path.is_file():
                with Image.open(path) as image:
                    rgb = np.asarray(image.convert("RGB"))
                if rgb.shape[:2] == shape:
                    return rgb
                logger.warning(
                    "frame %s is %s but its mask is %s; drawing on gray", path, rgb.shape[:2], shape
                )
                break
    return np.full((*shape, 3), 128, np.uint8)


def _paint(rgb: np.ndarray, ids: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Objects filled at half opacity in their palette colours, with a solid outline."""
    out = rgb.astype(np.float32)
    inside = ids != 0
    color = colors[np.clip(ids, 0, 255)]
    out[inside] = 0.5 * out[inside] + 0.5 * color[inside]
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge &= inside
    out[edge] = color[edge]
    return out.clip(0, 255).astype(np.uint8)


def overlay_png(
    worst: WorstFrame,
    gt_root: Path,
    pred_root: Path,
    image_root: Path | None,
    palette: list[int] | None = None,
) -> bytes:
    """Ground truth (left) and prediction (right) of one frame drawn over the video frame."""
    gt_ids = _id_map(VideoMasks.open(gt_root / worst.video), worst.frame)
    pred_ids = _id_map(VideoMasks.open(pred_root / worst.video), worst.frame)
    rgb = _frame_image(image_root, worst.video, worst.frame, gt_ids.shape)
    colors = np.array(palette or default_palette(), dtype=np.float32).reshape(-1, 3)[:256]
    if colors.shape[0] < 256:
        colors = np.concatenate([colors, np.full((256 - colors.shape[0], 3), 255, np.float32)])
    gap = np.full((gt_ids.shape[0], 8, 3), 255, np.uint8)
    panel = np.concatenate([_paint(rgb, gt_ids, colors), gap, _paint(rgb, pred_ids, colors)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(panel).save(buffer, format="PNG")
    return buffer.getvalue()


def write_report(
    result: EvaluationResult,
    output_dir: str | os.PathLike,
    gt_root: str | os.PathLike | None = None,
    pred_root: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    worst_videos: int = 3,
    frames_per_video: int = 2,
    embed_images: bool = False,
    title: str = "VOS evaluation",
) -> str:
    """Writes ``report.md``, ``jf_per_video.png`` and worst-frame overlays into `output_dir`.

    Overlays need `gt_root` and `pred_root` (mask folders); `image_root` (``JPEGImages``) puts the video
    frames under them, otherwise they are drawn on gray. ``report.md`` links the PNG files next to it;
    the returned Markdown does too, or with `embed_images` carries them as data URIs.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, bytes] = {}

    def image_ref(data: bytes, name: str) -> str:
        atomic_write_bytes(folder / name, data)
        written[name] = data
        return name

    scored = [video for video in result.videos.values() if video.jf is not None]
    ranked = sorted(scored, key=lambda video: (video.jf, video.name))
    lines = [
        f"# {title}",
        "",
        f"**J&F {_percent(result.jf)}** (J {_percent(result.j)}, F {_percent(result.f)}) over "
        f"{sum(len(v.objects) for v in scored)} objects in {len(scored)} videos, "
        f"{result.num_frames} evaluated frames; protocol `{result.protocol}`"
        + (", first and last frame skipped." if result.skip_first_and_last else ", all frames."),
        "",
    ]
    unscored = sorted(name for name, video in result.videos.items() if video.jf is None)
    if unscored:
        lines += [f"Not scored (no object in the evaluated frames): {', '.join(unscored)}", ""]

    chart = image_ref(bar_chart_png(result), "jf_per_video.png")
    lines += ["## Per-video J&F", "", f"![per-video J&F]({chart})", ""]
    lines += ["| video | objects | frames | J&F | J | F |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for video in ranked:
        lines.append(
            f"| {video.name} | {len(video.objects)} | {video.num_frames} | {_percent(video.jf)} | "
            f"{_percent(video.j)} | {_percent(video.f)} |"
        )
    lines.append("")

    if gt_root is not None and pred_root is not None and worst_videos > 0 and ranked:
        gt_path, pred_path = Path(gt_root), Path(pred_root)
        images = Path(image_root) if image_root is not None else None
        lines += [
            "## Worst frames of the worst videos",
            "",
            "Left: ground truth, right: prediction, drawn over the frame.",
            "",
        ]
        for video in ranked[:worst_videos]:
            lines += [f"### {video.name} (J&F {_percent(video.jf)})", ""]
            for worst in worst_frames(video, frames_per_video):
                name = f"overlay_{video.name}_{Path(worst.frame).stem}.png"
                ref = image_ref(overlay_png(worst, gt_path, pred_path, images), name)
                per_object = ", ".join(f"{i}: {100 * j:.1f}" for i, j in sorted(worst.per_object_j.items()))
                lines += [
                    f"Frame `{worst.frame}`: mean J {100 * worst.mean_j:.1f} (per object J: {per_object})",
                    "",
                ]
                lines += [f"![{video.name} {worst.frame}]({ref})", ""]
    markdown = "\n".join(lines)
    atomic_write_bytes(folder / "report.md", markdown.encode("utf-8"))
    if embed_images:
        for name, data in written.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            markdown = markdown.replace(f"]({name})", f"]({uri})")
    return markdown
