"""Video frame loading for the predictors, mask boxes, prompt bookkeeping, and hole filling of mask scores.

Connected components are labelled by scipy.ndimage (compiled, single pass) for CPU tensors and by a
parallel union-find in plain torch on CUDA, so hole filling needs no custom CUDA extension anywhere.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from threading import Thread

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
VIDEO_FILE_SUFFIXES = (".mp4", ".MP4", ".mov", ".MOV", ".avi", ".AVI", ".mkv", ".MKV", ".webm")


def get_sdpa_settings() -> tuple[bool, bool, bool]:
    """(old_gpu, use_flash_attn, math_kernel_on), the official attention-kernel hints: on CUDA, a GPU
    before compute capability 7 is old, Flash Attention needs 8.0+ (and PyTorch 2.2+ for its v2), and the
    math kernel stays on where Flash Attention is off; without CUDA (True, False, True). Warns, as the
    official function does, when Flash Attention is unavailable on the GPU."""
    if not torch.cuda.is_available():
        return True, False, True
    major = torch.cuda.get_device_properties(0).major
    old_gpu = major < 7
    use_flash_attn = major >= 8
    if not use_flash_attn:
        warnings.warn(
            "Flash Attention is disabled as it requires a GPU with Ampere (8.0) CUDA capability.",
            category=UserWarning,
            stacklevel=2,
        )
    torch_version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if torch_version < (2, 2):
        warnings.warn(
            f"PyTorch {torch.__version__} has no Flash Attention v2; PyTorch 2.2+ could be faster.",
            category=UserWarning,
            stacklevel=2,
        )
    math_kernel_on = torch_version < (2, 2) or not use_flash_attn
    return old_gpu, use_flash_attn, math_kernel_on


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around bool masks [B, 1, H, W] -> [B, 1, 4] int (x0, y0, x1, y1), inclusive corners.

    An empty mask gives (W, H, -1, -1), i.e. an inverted box that downstream code can detect.
    """
    batch, _, height, width = masks.shape
    xs = torch.arange(width, device=masks.device, dtype=torch.int32)
    ys = torch.arange(height, device=masks.device, dtype=torch.int32)
    grid_x = xs[None, :].expand(height, width)[None, None].expand(batch, 1, height, width)
    grid_y = ys[:, None].expand(height, width)[None, None].expand(batch, 1, height, width)
    x0 = torch.where(masks, grid_x, width).flatten(-2).amin(dim=-1)
    x1 = torch.where(masks, grid_x, -1).flatten(-2).amax(dim=-1)
    y0 = torch.where(masks, grid_y, height).flatten(-2).amin(dim=-1)
    y1 = torch.where(masks, grid_y, -1).flatten(-2).amax(dim=-1)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def concat_points(
    old_point_inputs: dict[str, torch.Tensor] | None, new_points: torch.Tensor, new_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Append clicks [B, N, 2] / labels [B, N] to a frame's earlier clicks (order matters to the model)."""
    if old_point_inputs is None:
        return {"point_coords": new_points, "point_labels": new_labels}
    return {
        "point_coords": torch.cat([old_point_inputs["point_coords"], new_points], dim=1),
        "point_labels": torch.cat([old_point_inputs["point_labels"], new_labels], dim=1),
    }


# ----------------------------------------------------------------------------------------------------------
# Connected components and hole filling
# ----------------------------------------------------------------------------------------------------------


# Neighbour offsets of 8-connectivity as slice pairs over [N, H, W] that reach the next row: down,
# down-right, down-left. (Left/right neighbours are joined up front, as runs along a row.)
_NEXT_ROW_NEIGHBOURS = (
    ((slice(None), slice(None, -1), slice(None)), (slice(None), slice(1, None), slice(None))),
    ((slice(None), slice(None, -1), slice(None, -1)), (slice(None), slice(1, None), slice(1, None))),
    ((slice(None), slice(None, -1), slice(1, None)), (slice(None), slice(1, None), slice(None, -1))),
)


def _compress(parent: torch.Tensor) -> torch.Tensor:
    """Point every entry straight at its tree's root (pointer jumping until nothing moves)."""
    while True:
        grandparent = parent.gather(0, parent)
        if torch.equal(grandparent, parent):
            return parent
        parent = grandparent


def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the 8-connected components of binary masks [N, 1, H, W].

    Returns (labels, counts), both [N, 1, H, W] int32 on the mask's device: `labels` is 0 on background
    and, on foreground, 1 + the row-major index of the component's first pixel (unique within one mask,
    not consecutive); `counts` holds each foreground pixel's component area and 0 on background.
    CPU tensors go through scipy.ndimage.label (about 10x faster than the torch union-find on the
    CPU), others through `connected_components_torch`; both give identical results.
    """
    if mask.dim() != 4 or mask.size(1) != 1:
        raise ValueError(f"mask must be shaped [N, 1, H, W], got {tuple(mask.shape)}")
    if mask.device.type == "cpu":
        return _connected_components_scipy(mask)
    return connected_components_torch(mask)


# 8-connectivity within each mask of a [N, H, W] stack, none across masks.
_EIGHT_CONNECTED_PER_MASK = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_MASK[1] = True


def _connected_components_scipy(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`get_connected_components` for CPU tensors: scipy's compiled labelling of the whole stack at once."""
    from scipy import ndimage

    num, _, height, width = mask.shape
    n_pix = height * width
    fg = mask.detach().reshape(num, height, width).bool().numpy()
    found, count = ndimage.label(fg, structure=_EIGHT_CONNECTED_PER_MASK)
    flat = found.ravel()
    # Each component's first pixel in row-major order. scipy numbers components in the order their first
    # pixels appear, so they sit where the running maximum of the numbers grows.
    first = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=0) > 0)
    if first.size != count:  # another numbering: each component's smallest index instead
        first = np.full(count + 1, flat.size, dtype=np.int64)
        nonzero = np.flatnonzero(flat)
        np.minimum.at(first, flat[nonzero], nonzero)
        first = first[1:]
    label_of = np.zeros(count + 1, dtype=np.int32)
    label_of[1:] = first % n_pix + 1  # index within its own mask
    area_of = np.bincount(flat, minlength=count + 1).astype(np.int32)
    area_of[0] = 0
    shape = (num, 1, height, width)
    return torch.from_numpy(label_of[flat]).reshape(shape), torch.from_numpy(area_of[flat]).reshape(shape)


def connected_components_torch(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`get_connected_components` in plain tensor ops (used on CUDA; runs on any device).

    Works as a parallel union-find: every foreground run along a row starts as one tree rooted at its
    first pixel; each round hooks every root onto the smallest root it touches in the next row (trees only
    point to smaller indices, so they never form cycles), then pointer jumping flattens the trees. Whole
    trees merge per round, so noisy or snake-like masks take a few rounds rather than one per pixel of path
    length. All steps are dense tensor ops (no index lists), on the CPU and on CUDA alike.
    """
    if mask.dim() != 4 or mask.size(1) != 1:
        raise ValueError(f"mask must be shaped [N, 1, H, W], got {tuple(mask.shape)}")
    num, _, height, width = mask.shape
    n_pix = height * width
    fg = mask.bool().reshape(num, height, width)
    # One index space over the whole batch: neighbour pairs never cross masks, so neither do trees.
    pixel_idx = torch.arange(num * n_pix, device=mask.device, dtype=torch.int64).reshape(num, height, width)
    run_start = fg.clone()
    run_start[:, :, 1:] &= ~fg[:, :, :-1]
    # Indices grow along a row, so the running max of run starts is each pixel's own run start.
    own_run = torch.where(run_start, pixel_idx, 0).cummax(dim=-1).values
    parent = torch.where(fg, own_run, pixel_idx).flatten()
    pairs = [fg[here] & fg[there] for here, there in _NEXT_ROW_NEIGHBOURS]
    while True:
        # `parent` is flat here (every entry is its root), so a pixel's root is just its own entry.
        roots = parent.reshape(num, height, width)
        targets, sources = [], []
        for (here, there), pair in zip(_NEXT_ROW_NEIGHBOURS, pairs, strict=True):
            root_a, root_b = roots[here], roots[there]
            # Pairs of non-neighbours (and of one tree) hook a root onto itself, which changes nothing.
            targets.append(torch.where(pair, torch.maximum(root_a, root_b), root_a).flatten())
            sources.append(torch.where(pair, torch.minimum(root_a, root_b), root_a).flatten())
        hooked = parent.scatter_reduce(0, torch.cat(targets), torch.cat(sources), reduce="amin")
        if torch.equal(hooked, parent):
            break
        parent = _compress(hooked)

    fg_flat = fg.flatten()
    # Background pixels stay their own roots and no foreground pixel points at one, so they count 0.
    counts = torch.zeros(num * n_pix, device=mask.device, dtype=torch.int64)
    counts.scatter_add_(0, parent, fg_flat.long())
    area = torch.where(fg_flat, counts.gather(0, parent), 0)
    mask_start = torch.arange(num, device=mask.device, dtype=torch.int64)[:, None] * n_pix
    labels = torch.where(fg_flat, (parent.reshape(num, n_pix) - mask_start).flatten() + 1, 0)
    return (
        labels.reshape(num, 1, height, width).to(torch.int32),
        area.reshape(num, 1, height, width).to(torch.int32),
    )


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """Turn small background holes (8-connected regions with score <= 0 and area <= `max_area`) into
    foreground by giving them a small positive score (0.1). `mask`: [N, 1, H, W] logits."""
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    labels, areas = get_connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, torch.as_tensor(0.1, dtype=mask.dtype, device=mask.device), mask)


# ----------------------------------------------------------------------------------------------------------
# Video frames
# ----------------------------------------------------------------------------------------------------------


def _read_frame(path: str, image_size: int) -> tuple[torch.Tensor, int, int]:
    """One image file -> ([3, S, S] float32 in [0, 1], original height, original width)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            pixels = _resized_rgb(img, image_size)
    except OSError as err:
        raise RuntimeError(f"cannot decode video frame {path}: {err}; re-extract this frame") from err
    if pixels.dtype != np.uint8:
        raise RuntimeError(f"video frame {path} has pixel type {pixels.dtype}; expected 8-bit RGB")
    return _pixels_to_tensor(pixels), height, width


def _resized_rgb(img: Image.Image, image_size: int) -> np.ndarray:
    """An image as [S, S, 3] RGB pixels, resized to `image_size` squared."""
    return np.array(img.convert("RGB").resize((image_size, image_size)))


def _pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """[H, W, 3] 8-bit pixels -> [3, H, W] float32 in [0, 1]."""
    # Divide in float64 then round once to float32 (as the official loader does, for identical inputs).
    return torch.from_numpy(pixels / 255.0).permute(2, 0, 1).float()


def _normalised(
    frames: torch.Tensor,
    img_mean: tuple[float, float, float],
    img_std: tuple[float, float, float],
    offload_video_to_cpu: bool,
    compute_device: torch.device | str,
) -> torch.Tensor:
    """Frames [T, 3, S, S] in [0, 1] moved to `compute_device` (unless offloaded) and normalised in place."""
    mean = torch.tensor(img_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(img_std, dtype=torch.float32)[:, None, None]
    if not offload_video_to_cpu:
        frames, mean, std = frames.to(compute_device), mean.to(compute_device), std.to(compute_device)
    frames -= mean
    frames /= std
    return frames


class EmptyVideoFolderError(RuntimeError, ValueError):
    """A video folder without JPEG frames: a RuntimeError as the official loader raises, and a ValueError
    (bad input) as this package raised before."""


def list_jpeg_frames(video_dir: str | os.PathLike) -> list[str]:
    """Paths of the JPEG frames in `video_dir`, ordered by the integer in their names (00000.jpg, 1.jpg...).

    Raises FileNotFoundError for a missing folder, EmptyVideoFolderError for an empty one, ValueError for
    names that are not integers.
    """
    folder = Path(video_dir)
    if not folder.exists():
        raise FileNotFoundError(f"video folder {folder} does not exist; pass a folder of <index>.jpg frames")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder} is not a folder; pass a folder of <index>.jpg frames "
            f"(extract them with `python -m sam2.tools.extract_frames --input {folder} --output <dir>`)"
        )
    names = [p.name for p in folder.iterdir() if p.suffix in JPEG_SUFFIXES]
    if not names:
        raise EmptyVideoFolderError(f"no JPEG frames (*.jpg, *.jpeg) found in video folder {folder}")
    bad = [n for n in names if not os.path.splitext(n)[0].isdigit()]
    if bad:
        shown = ", ".join(sorted(bad)[:5])
        raise ValueError(
            f"frames in {folder} must be named by their integer index (e.g. 00000.jpg); "
            f"found {len(bad)} other name(s): {shown}. Rename them, e.g. with "
            f"`python -m sam2.tools.extract_frames`."
        )
    names.sort(key=lambda n: int(os.path.splitext(n)[0]))
    return [str(folder / n) for n in names]


class AsyncVideoFrameLoader(Sequence):
    """Frames read in a background thread so a session can start (and the user click) at once.

    Indexing a frame that is not loaded yet reads it on the spot; an error in the thread is re-raised on
    the next access.
    """

    def __init__(
        self,
        img_paths: list[str],
        image_size: int,
        offload_video_to_cpu: bool,
        img_mean: torch.Tensor,
        img_std: torch.Tensor,
        compute_device: torch.device,
    ) -> None:
        self.img_paths = img_paths
        self.image_size = image_size
        self.offload_video_to_cpu = offload_video_to_cpu
        self.img_mean = img_mean
        self.img_std = img_std
        self.compute_device = compute_device
        self.images: list[torch.Tensor | None] = [None] * len(img_paths)
        self.exception: BaseException | None = None
        self.video_height: int | None = None
        self.video_width: int | None = None
        self[0]  # first frame now: it sets the video size and is where users usually click
        self.thread = Thread(target=self._load_all, daemon=True)
        self.thread.start()

    def _load_all(self) -> None:
        try:
            for idx in tqdm(range(len(self.images)), desc="frame loading (JPEG)"):
                self[idx]
        except Exception as err:  # surfaced to the caller by __getitem__
            self.exception = err

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        if self.exception is not None:
            raise RuntimeError("loading video frames in the background failed") from self.exception
        cached = self.images[index]
        if cached is not None:
            return cached
        img, height, width = _read_frame(self.img_paths[index], self.image_size)
        self.video_height, self.video_width = height, width
        img = (img - self.img_mean) / self.img_std
        if not self.offload_video_to_cpu:
            img = img.to(self.compute_device, non_blocking=True)
        self.images[index] = img
        return img

    def __len__(self) -> int:
        return len(self.images)


def load_video_frames_from_jpg_images(
    video_path: str | os.PathLike,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: tuple[float, float, float] = IMAGENET_MEAN,
    img_std: tuple[float, float, float] = IMAGENET_STD,
    async_loading_frames: bool = False,
    compute_device: torch.device | str = torch.device("cuda"),  # the official default
) -> tuple[torch.Tensor | AsyncVideoFrameLoader, int, int]:
    """Read a folder of `<index>.jpg` frames, resized to `image_size` squared and normalised.

    Frames go to `compute_device` unless `offload_video_to_cpu`. Returns (frames [T, 3, S, S] or a lazy
    loader, original height, original width).
    """
    img_paths = list_jpeg_frames(video_path)
    compute_device = torch.device(compute_device)
    if async_loading_frames:
        mean = torch.tensor(img_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(img_std, dtype=torch.float32)[:, None, None]
        lazy = AsyncVideoFrameLoader(img_paths, image_size, offload_video_to_cpu, mean, std, compute_device)
        return lazy, lazy.video_height, lazy.video_width

    frames = torch.zeros(len(img_paths), 3, image_size, image_size, dtype=torch.float32)
    height = width = 0
    for idx, path in enumerate(tqdm(img_paths, desc="frame loading (JPEG)")):
        frames[idx], height, width = _read_frame(path, image_size)
    return _normalised(frames, img_mean, img_std, offload_video_to_cpu, compute_device), height, width


def load_video_frames_from_video_file(
    video_path: str | os.PathLike,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: tuple[float, float, float] = IMAGENET_MEAN,
    img_std: tuple[float, float, float] = IMAGENET_STD,
    compute_device: torch.device | str = torch.device("cuda"),  # the official default
) -> tuple[torch.Tensor, int, int]:
    """Decode a video file with PyAV, resized to `image_size` squared and normalised."""
    import av

    path = Path(video_path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    frames = []
    height = width = 0
    try:
        with av.open(str(path)) as container:
            for frame in tqdm(container.decode(video=0), desc="frame decoding"):
                img = frame.to_image()
                width, height = img.size
                frames.append(_pixels_to_tensor(_resized_rgb(img, image_size)))
    except av.error.FFmpegError as err:
        raise RuntimeError(f"cannot decode video file {path}: {err}") from err
    if not frames:
        raise ValueError(f"video file {path} holds no frames")
    stack = torch.stack(frames)
    return _normalised(stack, img_mean, img_std, offload_video_to_cpu, compute_device), height, width


def load_video_frames(
    video_path: str | os.PathLike,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: tuple[float, float, float] = IMAGENET_MEAN,
    img_std: tuple[float, float, float] = IMAGENET_STD,
    async_loading_frames: bool = False,
    compute_device: torch.device | str = torch.device("cuda"),  # the official default
) -> tuple[torch.Tensor | AsyncVideoFrameLoader, int, int]:
    """Frames of a video given as a folder of `<index>.jpg` files or as a video file (.mp4 etc.)."""
    path = Path(video_path)
    if path.suffix in VIDEO_FILE_SUFFIXES and not path.is_dir():
        return load_video_frames_from_video_file(
            path, image_size, offload_video_to_cpu, img_mean, img_std, compute_device
        )
    return load_video_frames_from_jpg_images(
        path, image_size, offload_video_to_cpu, img_mean, img_std, async_loading_frames, compute_device
    )
