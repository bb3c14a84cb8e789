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
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sam2.eval.evaluator import EvaluationResult, VideoResult  # noqa: E402
from sam2.eval.masks import MaskDataError, VideoMasks, default_palette  # noqa: E402
from sam2.utils.atomic_io import atomic_write_bytes  # noqa: E402

if TYPE_CHECKING:
    from sam2.storage import ObjectStore

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


def stage_report_frames(
    store: ObjectStore, data_uri: str, data: Path, result: EvaluationResult, frames_per_video: int = 2
) -> int:
    """Fetch the frames a report's overlays draw on into `data`: the `frames_per_video` worst frames of
    each scored video of `result` (`worst_frames`), not the val videos' every frame. Returns bytes."""
    from sam2.data.layout import IMAGE_SUFFIXES, IMAGES_DIR
    from sam2.data.staging import stage_files

    published = store.read_marker(data_uri)["files"]
    wanted = []
    for video in result.videos.values():
        for worst in worst_frames(video, frames_per_video):
            stem = Path(worst.frame).stem
            candidates = [f"{IMAGES_DIR}/{video.name}/{stem}{suffix}" for suffix in IMAGE_SUFFIXES]
            wanted += [rel for rel in candidates if rel in published]
    return stage_files(store, data_uri, data, wanted)


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
        return link_target(name)

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
    return _write_markdown(folder, lines, written, embed_images)


# -- comparison of several models on the same videos --------------------------------------------------

MODEL_ORDER = ("baseline", "champion", "new")


def _panel_png(worst: WorstFrame, gt_root: Path, pred_roots: list[Path], image_root: Path | None) -> bytes:
    """Ground truth, then each prediction of one frame, drawn over the video frame side by side."""
    gt_ids = _id_map(VideoMasks.open(gt_root / worst.video), worst.frame)
    rgb = _frame_image(image_root, worst.video, worst.frame, gt_ids.shape)
    colors = np.array(default_palette(), dtype=np.float32).reshape(-1, 3)[:256]
    gap = np.full((gt_ids.shape[0], 8, 3), 255, np.uint8)
    parts = [_paint(rgb, gt_ids, colors)]
    for root in pred_roots:
        parts += [gap, _paint(rgb, _id_map(VideoMasks.open(root / worst.video), worst.frame), colors)]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(parts, axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()


def change_chart_png(changes: list[tuple[str, float]], reference: str) -> bytes:
    """Per-video change of J&F (new minus `reference`, points) as bars sorted from most lost to most won."""
    ranked = sorted(changes, key=lambda item: (item[1], item[0]))
    height = max(2.5, 0.28 * len(ranked) + 1.2)
    figure, axes = plt.subplots(figsize=(7.5, height), dpi=100)
    try:
        values = [value for _, value in ranked]
        colors = ["#C44E52" if value < 0 else "#55A868" for value in values]
        axes.barh(range(len(values)), values, color=colors)
        axes.set_yticks(range(len(values)), labels=[name for name, _ in ranked], fontsize=8)
        axes.invert_yaxis()
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_xlabel(f"J&F change, new minus {reference} (points)")
        axes.set_title(f"Per-video change of J&F against the {reference}")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def curves_png(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """Training loss (per logged step when the logs have it, else per epoch) and val J&F per epoch."""
    figure, panels = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    loss = ("train_loss_per_step", "step") if curves.get("train_loss_per_step") else ("train_loss", "epoch")
    try:
        for axes, (name, xlabel, ylabel) in zip(
            panels, ((*loss, "train loss (core)"), ("val_J&F", "epoch", "val J&F (%)")), strict=True
        ):
            points = curves.get(name) or []
            if points:
                marker = "o" if len(points) < 30 else None
                axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color="#4C72B0")
            else:
                axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.grid(alpha=0.3)
        figure.suptitle("Training curves (TensorBoard logs of this run)")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def link_target(name: str) -> str:
    """A file name as a Markdown link target: percent-encoded, so that a video named with a space or a
    parenthesis (``my clip (2)``) does not end the link early."""
    return urllib.parse.quote(name)


class _Images:
    """The PNGs of one report: written into its folder, remembered for embedding."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: dict[str, bytes] = {}

    def ref(self, data: bytes, name: str) -> str:
        """Write `data` as `name` in the report folder; returns the Markdown link target."""
        atomic_write_bytes(self.folder / name, data)
        self.written[name] = data
        return link_target(name)


def write_comparison_report(
    results: dict[str, EvaluationResult],
    output_dir: str | os.PathLike,
    gt_root: str | os.PathLike,
    pred_roots: dict[str, str | os.PathLike],
    image_root: str | os.PathLike | None = None,
    labels: dict[str, str] | None = None,
    skipped: dict[str, str] | None = None,
    curves: dict[str, list[tuple[int, float]]] | None = None,
    worst_videos: int = 3,
    frames_per_video: int = 2,
    embed_images: bool = False,
    title: str = "VOS evaluation",
    notes: list[str] | None = None,
) -> str:
    """Writes ``report.md`` and its PNGs into `output_dir`: the baseline, champion and new model side by
    side (J&F, J, F overall and per video), the per-video change of the new model against the champion
    (else the baseline) as a sorted bar chart, overlays of the videos where the new model lost most, and
    the training curves. `results` / `pred_roots` are keyed by "new", "champion", "baseline" ("new" is
    required); a model in `skipped` is listed with the reason it was not scored.

    Returns the Markdown (with `embed_images`, the PNGs inlined as data URIs).
    """
    if "new" not in results:
        raise ValueError(f"a comparison report needs the new model's results, got {sorted(results)}")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    images = _Images(folder)
    order = [key for key in MODEL_ORDER if key in results] + sorted(set(results) - set(MODEL_ORDER))
    reference = next((key for key in ("champion", "baseline") if key in results), None)
    videos = sorted(results["new"].videos)
    changes = _jf_changes(results["new"], results[reference], videos) if reference else {}

    lines = [f"# {title}", ""]
    lines += [f"{note}" for note in notes or []] + ([""] if notes else [])
    lines += _scores_table(results, order, {key: key for key in results} | (labels or {}), skipped or {})
    if curves is not None:
        lines += [
            "## Training curves",
            "",
            f"![training curves]({images.ref(curves_png(curves), 'curves.png')})",
            "",
        ]
    lines += _change_section(changes, reference, images)
    by_change = sorted(videos, key=lambda v: (changes.get(v, 0.0), v))
    lines += _per_video_table(results, order, by_change, changes)
    if worst_videos > 0:
        lines += _worst_videos_section(
            results["new"],
            by_change,
            changes,
            reference,
            [Path(pred_roots[key]) for key in ["new"] + ([reference] if reference else [])],
            Path(gt_root),
            Path(image_root) if image_root is not None else None,
            images,
            worst_videos,
            frames_per_video,
        )
    return _write_markdown(folder, lines, images.written, embed_images)


def _scores_table(
    results: dict[str, EvaluationResult], order: list[str], labels: dict[str, str], skipped: dict[str, str]
) -> list[str]:
    """Every model's J&F, J, F and the new model's change against it; the models not scored, and why."""
    new = results["new"]
    lines = [
        f"All models run on the same {len(new.videos)} val videos with the same settings, "
        f"protocol `{new.protocol}`.",
        "",
        "| model | J&F | J | F | J&F change of new |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in order:
        r = results[key]
        change = "" if key == "new" else _points(new.jf - r.jf)
        lines.append(
            f"| {key}: {labels[key]} | {_percent(r.jf)} | {_percent(r.j)} | {_percent(r.f)} | {change} |"
        )
    lines += [f"| {key} | not scored | | | |" for key in MODEL_ORDER if key not in results]
    lines.append("")
    lines += [f"- {key} not scored: {why}" for key, why in sorted(skipped.items()) if key not in results]
    if any(key not in results for key in skipped):
        lines.append("")
    return lines


def _jf_changes(new: EvaluationResult, reference: EvaluationResult, videos: list[str]) -> dict[str, float]:
    """Per video, new minus `reference` J&F in points, where both scored it."""
    changes: dict[str, float] = {}
    for name in videos:
        a = new.videos[name].jf
        b = reference.videos[name].jf if name in reference.videos else None
        if a is not None and b is not None:
            changes[name] = 100 * (a - b)
    return changes


def _change_section(changes: dict[str, float], reference: str | None, images: _Images) -> list[str]:
    """The sorted bar chart of the per-video change against the champion (else the baseline)."""
    if reference is None:
        return ["No champion or baseline was scored, so there is no per-video change to show.", ""]
    chart = images.ref(change_chart_png(sorted(changes.items()), reference), "jf_change_per_video.png")
    return [f"## Per-video change against the {reference}", "", f"![per-video change]({chart})", ""]


def _per_video_table(
    results: dict[str, EvaluationResult], order: list[str], by_change: list[str], changes: dict[str, float]
) -> list[str]:
    """Each video's J&F and J under every model and its change, most lost first."""

    def scores(name: str, attr: str) -> str:
        return " | ".join(
            _percent(getattr(results[k].videos[name], attr) if name in results[k].videos else None)
            for k in order
        )

    header = " | ".join(f"{key} J&F" for key in order)
    lines = [
        "## Per video",
        "",
        f"| video | {header} | {' | '.join(f'{key} J' for key in order)} | change |",
        "| --- | " + " | ".join("---:" for _ in range(2 * len(order))) + " | ---: |",
    ]
    for name in by_change:
        change = f"{changes[name]:+.1f}" if name in changes else ""
        lines.append(f"| {name} | {scores(name, 'jf')} | {scores(name, 'j')} | {change} |")
    lines.append("")
    return lines


def _worst_videos_section(
    new: EvaluationResult,
    by_change: list[str],
    changes: dict[str, float],
    reference: str | None,
    roots: list[Path],
    gt_root: Path,
    image_root: Path | None,
    images: _Images,
    worst_videos: int,
    frames_per_video: int,
) -> list[str]:
    """Overlays (ground truth, new, reference) of the worst frames of the videos the new model lost most
    on against `reference`, or, with no reference, scored lowest on."""
    ranked = [v for v in by_change if new.videos[v].jf is not None]
    if reference is None:
        ranked = sorted(ranked, key=lambda v: (new.videos[v].jf, v))
    if not ranked:
        return []
    shown = ["new"] + ([reference] if reference else [])
    what = f"lost most against the {reference}" if reference else "scored lowest"
    lines = [
        f"## Videos where the new model {what}",
        "",
        "Left to right: ground truth, " + ", ".join(f"{key} prediction" for key in shown) + ".",
        "",
    ]
    for name in ranked[:worst_videos]:
        video = new.videos[name]
        change = f", change {changes[name]:+.1f}" if name in changes else ""
        lines += [f"### {name} (new J&F {_percent(video.jf)}{change})", ""]
        for worst in worst_frames(video, frames_per_video):
            png = _panel_png(worst, gt_root, roots, image_root)
            link = images.ref(png, f"compare_{name}_{Path(worst.frame).stem}.png")
            lines += [f"Frame `{worst.frame}`: new mean J {100 * worst.mean_j:.1f}", ""]
            lines += [f"![{name} {worst.frame}]({link})", ""]
    return lines


def _write_markdown(folder: Path, lines: list[str], written: dict[str, bytes], embed_images: bool) -> str:
    """Write `report.md` with its PNGs referenced by file name; return the Markdown, with the images inlined
    as data URIs when `embed_images` (the KFP Markdown artifact, which has no folder beside it)."""
    markdown = "\n".join(lines)
    atomic_write_bytes(folder / "report.md", markdown.encode("utf-8"))
    if embed_images:
        for name, data in written.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            markdown = markdown.replace(f"]({link_target(name)})", f"]({uri})")
    return markdown
