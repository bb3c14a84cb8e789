"""Connected-component labelling and hole filling (`sam2.utils.misc`): what `get_connected_components`
runs for the mask's device (scipy.ndimage on the CPU, the torch union-find elsewhere), the torch
union-find, and the earlier 3x3 min-label propagation, all measured in the same run on the same masks.

The earliest implementation is kept below as the reference (it is what the predictors ran first); each
case first checks that all give identical labels and areas, then times them. Masks: a realistic object
mask (a blob with a few holes and specks, as the video predictor's hole filling sees), uniform noise
(one huge winding component plus many small ones, the slow case for propagation) and a serpentine path.

    python benchmarks/postprocess.py --size 256 --batch 1 --repeats 20
    python benchmarks/postprocess.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sam2.utils.misc import connected_components_torch, fill_holes_in_mask_scores, get_connected_components


def propagation_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous labelling: 3x3 min-label propagation with four pointer jumps per round."""
    num, _, height, width = mask.shape
    fg = mask.bool().reshape(num, height * width)
    n_pix = height * width
    pixel_idx = torch.arange(n_pix, device=mask.device, dtype=torch.int64).expand(num, n_pix)
    labels = torch.where(fg, pixel_idx, torch.full_like(pixel_idx, n_pix))
    while True:
        grid = labels.reshape(num, 1, height, width).float()
        neigh_min = -F.max_pool2d(-grid, kernel_size=3, stride=1, padding=1)
        new = torch.where(fg, torch.minimum(labels, neigh_min.reshape(num, n_pix).long()), labels)
        for _ in range(4):
            jumped = torch.gather(new, 1, new.clamp(max=n_pix - 1))
            new = torch.where(fg, torch.minimum(new, jumped), new)
        if torch.equal(new, labels):
            break
        labels = new
    counts = torch.zeros(num, n_pix + 1, device=mask.device, dtype=torch.int64)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    area = torch.where(fg, torch.gather(counts, 1, labels), torch.zeros_like(labels))
    out_labels = torch.where(fg, labels + 1, torch.zeros_like(labels))
    return (
        out_labels.reshape(num, 1, height, width).to(torch.int32),
        area.reshape(num, 1, height, width).to(torch.int32),
    )


def object_logits(batch: int, size: int, seed: int) -> torch.Tensor:
    """Logits of a soft blob with small holes and specks, like a predicted object mask."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    logits = torch.empty(batch, 1, size, size)
    for b in range(batch):
        cy, cx = (torch.rand(2, generator=gen) * 0.4 + 0.3) * size
        radius = size * (0.2 + 0.1 * torch.rand(1, generator=gen))
        blob = radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        logits[b, 0] = blob + 3.0 * torch.randn(size, size, generator=gen)
    return logits


def noise_logits(batch: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=gen)


def serpentine_logits(batch: int, size: int) -> torch.Tensor:
    """One background path that snakes across the whole image (longest chains for propagation)."""
    free = torch.zeros(size, size, dtype=torch.bool)
    free[::4, :] = True
    for row in range(0, size, 8):
        free[row : row + 4, -1] = True
        free[row + 4 : row + 8, 0] = True
    return torch.where(free, -1.0, 1.0).expand(batch, 1, size, size).clone()


def time_call(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="mask side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="masks per call (objects)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-area", type=int, default=8, help="fill_hole_area of the video predictor")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cases = {
        "object mask": object_logits(args.batch, args.size, seed=0),
        "noise": noise_logits(args.batch, args.size, seed=1),
        "serpentine": serpentine_logits(args.batch, args.size),
    }
    print(
        f"connected components of `logits <= 0`, {args.batch} x {args.size}x{args.size}, {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(
        "| mask | components | propagation (first) ms | torch union-find ms | get_connected_components ms "
        "| vs union-find | fill_holes ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, logits in cases.items():
        logits = logits.to(device)
        background = logits <= 0
        old_labels, old_areas = propagation_components(background)
        uf_labels, uf_areas = connected_components_torch(background)
        new_labels, new_areas = get_connected_components(background)
        for what, (lab, area) in {
            "union-find": (uf_labels, uf_areas),
            "default": (new_labels, new_areas),
        }.items():
            if not (torch.equal(old_labels, lab) and torch.equal(old_areas, area)):
                raise SystemExit(f"{name}: the {what} labelling disagrees with the reference; not timing")
        n_components = sum(int(lab[lab > 0].unique().numel()) for lab in new_labels)
        old_s = time_call(lambda b=background: propagation_components(b), args.repeats, device)
        uf_s = time_call(lambda b=background: connected_components_torch(b), args.repeats, device)
        new_s = time_call(lambda b=background: get_connected_components(b), args.repeats, device)
        fill_s = time_call(lambda x=logits: fill_holes_in_mask_scores(x, args.max_area), args.repeats, device)
        print(
            f"| {name} | {n_components} | {old_s * 1e3:.2f} | {uf_s * 1e3:.2f} | {new_s * 1e3:.2f} | "
            f"{uf_s / new_s:.1f}x | {fill_s * 1e3:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
