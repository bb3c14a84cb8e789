"""SAM2AutomaticMaskGenerator and sam2.utils.amg give the official package's masks and records.

Oracle comparisons: on the same image and weights (the tiny model at image_size 256, with stirred weights
the official package wrote, and with those weights after two steps of our trainer), the same number of
masks, matched one to one at IoU >= 0.99, with predicted IoU and stability scores within 1e-4 and the same
clicks and crop boxes; for whole-image runs, a crop layer, single-mask m2m refinement, hole/speck removal
and all three output modes (the crop cases keep masks of the whole image and of crops). The amg helpers
are compared function by function.

The official predictor hard-codes 1024-pixel feature sizes (its oracle script overrides them for the small
model) and removes holes and specks with a CUDA-only kernel: for the oracle run, `get_connected_components`
is replaced by OpenCV's 8-connected labelling (installed for the oracle only, under .cache), so the official
clean-up runs on the CPU as it would on a GPU.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from sam2_oracle import (
    REPO_ROOT,
    oracle_checkpoint,
    oracle_required,
    own_checkpoint,
    require_oracle,
    run_oracle,
)
from training_loop_support import MICRO_MODEL_OVERRIDES, TRAIN_CONFIG, make_clips, training_overrides

from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2
from sam2.utils import amg

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL_MODEL = ["++model.image_size=256"]
SCORE_TOLERANCE = 1e-4
MIN_IOU = 0.99
# OpenCV for the oracle's connected components (the official kernel is CUDA-only). Not a dependency of
# ours: our package labels components in plain torch.
OPENCV_REQUIREMENT = "opencv-python-headless==5.0.0.93"
OPENCV_DIR = REPO_ROOT / ".cache" / "sam2_ref_opencv"


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """Flat-coloured shapes on a textured background: objects for the grid clicks to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([np.sin(xx / 11.0) * 40 + 90, np.cos(yy / 9.0) * 40 + 90, (xx + yy) % 120], axis=-1)
    image[height // 6 : height // 2, width // 5 : width // 2] = [230, 40, 40]
    image[height // 2 : 5 * height // 6, width // 2 : 4 * width // 5] = [40, 220, 60]
    image[(yy - height // 3) ** 2 + (xx - 3 * width // 4) ** 2 < (height // 7) ** 2] = [40, 60, 230]
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


IMAGE = _scene(144, 192, seed=0)

# Settings per case: CPU-small grids, thresholds loose enough that untrained weights keep several masks.
# At the default noise of 0.02 every click gives the same whole-image mask; with this seed some masks of
# the crops also lie clear of the crops' inner edges, so crop masks reach the output.
STIRRED_NOISE = 0.1
STIRRED_SEED = 2
STIRRED_CASES = {
    "whole image, binary masks": dict(
        points_per_side=6,
        pred_iou_thresh=0.05,
        stability_score_thresh=0.7,
        stability_score_offset=0.05,
        box_nms_thresh=0.9,
    ),
    "one crop layer, uncompressed RLE": dict(
        points_per_side=4,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=0.9,
        output_mode="uncompressed_rle",
    ),
    "m2m single mask, small regions removed, COCO RLE": dict(
        points_per_side=5,
        multimask_output=False,
        use_m2m=True,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        stability_score_offset=0.05,
        box_nms_thresh=1.0,
        min_mask_region_area=25,
        output_mode="coco_rle",
    ),
}
TRAINED_CASES = {
    "trained, whole image": dict(
        points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9
    ),
    "trained, one crop layer": dict(
        points_per_side=4,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=0.9,
    ),
}

_CV2_COMPONENTS = """
import sys
sys.path.insert(0, inputs["opencv_dir"])
import cv2
import numpy as np
import sam2.utils.misc


def _components_with_opencv(mask):
    # Same contract as the official CUDA kernel: labels (0 = background) and each pixel's component area.
    planes = mask.to(torch.uint8).cpu().numpy()[:, 0]
    labels, areas = np.zeros(planes.shape, np.int32), np.zeros(planes.shape, np.int32)
    for i, plane in enumerate(planes):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        labels[i] = lab
        areas[i] = np.where(lab > 0, stats[:, cv2.CC_STAT_AREA][lab], 0)
    return torch.from_numpy(labels)[:, None].to(mask.device), torch.from_numpy(areas)[:, None].to(mask.device)


sam2.utils.misc.get_connected_components = _components_with_opencv
"""

_GENERATOR_SCRIPT = (
    _CV2_COMPONENTS
    + """
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2
torch.set_num_threads(1)
model = build_sam2(inputs["config"], inputs["ckpt"], device="cpu", hydra_overrides_extra=inputs["overrides"])
side = model.image_size
results = {}
for name, settings in inputs["cases"].items():
    generator = SAM2AutomaticMaskGenerator(model, **settings)
    generator.predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
    results[name] = generator.generate(inputs["image"])
outputs["results"] = results
"""
)


def _opencv_for_oracle() -> str:
    """The folder holding OpenCV for oracle scripts, installed on first use (skip or fail as the oracle)."""
    marker = OPENCV_DIR / ".installed"
    if marker.exists():
        return str(OPENCV_DIR)
    OPENCV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(OPENCV_DIR.parent / ".sam2_ref_opencv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps"]
            cmd += ["--target", str(OPENCV_DIR), OPENCV_REQUIREMENT]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
                failed = proc.returncode != 0
                reason = (proc.stderr or proc.stdout).strip()[-500:]
            except subprocess.TimeoutExpired:
                failed, reason = True, "pip timed out after 240 s"
            if failed:
                message = f"OpenCV for the oracle could not be installed ({' '.join(cmd)}): {reason}"
                if oracle_required():
                    pytest.fail(message, pytrace=False)
                pytest.skip(message)
            marker.write_text(OPENCV_REQUIREMENT + "\n")
    return str(OPENCV_DIR)


@pytest.fixture(scope="module")
def opencv_dir() -> str:
    require_oracle()
    return _opencv_for_oracle()


@pytest.fixture(scope="module")
def stirred_checkpoint() -> Path:
    require_oracle()
    return oracle_checkpoint(CONFIG, seed=STIRRED_SEED, noise=STIRRED_NOISE)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, stirred_checkpoint: Path) -> Path:
    """The tiny model after one short epoch (2 steps at 64 px) of our trainer on synthetic clips, started
    from the stirred weights."""
    from sam2.training.train import main

    root = tmp_path_factory.mktemp("amg_trained")
    torch.set_num_threads(1)
    img, gt = make_clips(root / "data", {"a": 3, "b": 3})
    overrides = [
        o
        for o in training_overrides(img, gt, root / "run", extra=["scratch.base_lr=1e-4"])
        if o not in MICRO_MODEL_OVERRIDES and "checkpoint_path=" not in o
    ]
    overrides.append(
        f"trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path={stirred_checkpoint}"
    )
    assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides]) == 0
    return root / "run" / "checkpoints" / "checkpoint.pt"


def _ours(ckpt: Path, overrides: list[str], cases: dict[str, dict]) -> dict[str, list[dict]]:
    torch.set_num_threads(1)
    model = build_sam2(CONFIG, str(ckpt), device="cpu", hydra_overrides_extra=overrides)
    return {name: SAM2AutomaticMaskGenerator(model, **s).generate(IMAGE) for name, s in cases.items()}


def _official(ckpt: Path, overrides: list[str], cases: dict[str, dict], opencv: str) -> dict[str, list[dict]]:
    inputs = {"config": CONFIG, "ckpt": str(ckpt), "overrides": overrides, "cases": cases, "image": IMAGE}
    return run_oracle(_GENERATOR_SCRIPT, {**inputs, "opencv_dir": opencv})["results"]


def _as_mask(segmentation, output_mode: str) -> np.ndarray:
    if output_mode == "binary_mask":
        return np.asarray(segmentation, dtype=bool)
    if output_mode == "uncompressed_rle":
        return amg.rle_to_mask(segmentation)
    return mask_utils.decode(segmentation).astype(bool)


def _match(ours: list[dict], official: list[dict], iou: np.ndarray) -> list[int]:
    """One of our masks per official mask: the unmatched one of highest IoU, ties (identical masks, e.g.
    empty ones) broken by the closest predicted IoU."""
    free = set(range(len(ours)))
    match = []
    for ref_idx, ref in enumerate(official):
        best = max(
            free, key=lambda j: (iou[ref_idx, j], -abs(ours[j]["predicted_iou"] - ref["predicted_iou"]))
        )
        free.remove(best)
        match.append(best)
    return match


def _assert_same_records(ours: list[dict], official: list[dict], output_mode: str, case: str) -> None:
    assert len(official) >= 2, f"{case}: the official generator kept {len(official)} masks; loosen the case"
    assert len(ours) == len(official), f"{case}: {len(ours)} masks vs the official {len(official)}"
    our_masks = np.stack([_as_mask(r["segmentation"], output_mode) for r in ours]).reshape(len(ours), -1)
    ref_masks = np.stack([_as_mask(r["segmentation"], output_mode) for r in official]).reshape(len(ours), -1)
    inter = ref_masks.astype(np.float64) @ our_masks.T.astype(np.float64)
    union = ref_masks.sum(1)[:, None] + our_masks.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty masks are the same mask
    for ref_idx, our_idx in enumerate(_match(ours, official, iou)):
        ref, mine = official[ref_idx], ours[our_idx]
        where = f"{case}, official mask {ref_idx}"
        assert iou[ref_idx, our_idx] >= MIN_IOU, f"{where}: best IoU {iou[ref_idx, our_idx]:.4f}"
        for key in ("predicted_iou", "stability_score"):
            if np.isnan(ref[key]):  # an empty mask's stability is 0 / 0, officially too
                assert np.isnan(mine[key]), f"{where}: {key} {mine[key]} vs {ref[key]}"
                continue
            assert abs(mine[key] - ref[key]) <= SCORE_TOLERANCE, f"{where}: {key} {mine[key]} vs {ref[key]}"
        assert mine["point_coords"][0] == pytest.approx(ref["point_coords"][0], abs=1e-4), where
        assert mine["crop_box"] == ref["crop_box"], where
        assert np.abs(np.subtract(mine["bbox"], ref["bbox"])).max() <= 1, where
        assert mine["area"] == int(our_masks[our_idx].sum()), where
        assert set(mine) == set(ref), where
        if output_mode != "binary_mask":
            assert set(mine["segmentation"]) == set(ref["segmentation"]), where
            assert type(mine["segmentation"]["counts"]) is type(ref["segmentation"]["counts"]), where


def _assert_some_masks_come_from_crops(records: list[dict]) -> None:
    whole = [0, 0, IMAGE.shape[1], IMAGE.shape[0]]
    from_crops = [r for r in records if r["crop_box"] != whole]
    assert from_crops and len(from_crops) < len(records), "the crop case needs masks of both layers"


def test_same_masks_as_official_on_stirred_weights(stirred_checkpoint: Path, opencv_dir: str) -> None:
    official = _official(stirred_checkpoint, SMALL_MODEL, STIRRED_CASES, opencv_dir)
    ours = _ours(stirred_checkpoint, SMALL_MODEL, STIRRED_CASES)
    for case, settings in STIRRED_CASES.items():
        _assert_same_records(ours[case], official[case], settings.get("output_mode", "binary_mask"), case)
    _assert_some_masks_come_from_crops(ours["one crop layer, uncompressed RLE"])
    # The hole/speck removal case has holes and specks to remove (else it compares nothing).
    case = "m2m single mask, small regions removed, COCO RLE"
    untouched = _ours(
        stirred_checkpoint, SMALL_MODEL, {case: {**STIRRED_CASES[case], "min_mask_region_area": 0}}
    )
    cleaned = [_as_mask(r["segmentation"], "coco_rle") for r in ours[case]]
    raw = [_as_mask(r["segmentation"], "coco_rle") for r in untouched[case]]
    assert len(cleaned) != len(raw) or any((a != b).any() for a, b in zip(cleaned, raw, strict=True))


def test_same_masks_as_official_on_a_trained_checkpoint(
    trained_checkpoint: Path, stirred_checkpoint: Path, opencv_dir: str
) -> None:
    trained = torch.load(trained_checkpoint, weights_only=True)["model"]
    stirred = torch.load(stirred_checkpoint, weights_only=True)["model"]
    assert any(not torch.equal(trained[k], stirred[k]) for k in stirred), "training changed no weight"
    official = _official(trained_checkpoint, SMALL_MODEL, TRAINED_CASES, opencv_dir)
    ours = _ours(trained_checkpoint, SMALL_MODEL, TRAINED_CASES)
    for case in TRAINED_CASES:
        _assert_same_records(ours[case], official[case], "binary_mask", case)
    _assert_some_masks_come_from_crops(ours["trained, one crop layer"])


# ---- sam2.utils.amg against the official helpers ------------------------------------------------------

# The calls, run once with the official amg (in the oracle) and once with ours: the names `amg`,
# `SAM2AutomaticMaskGenerator`, `np`, `torch`, `inputs` and `outputs` are each side's.
_AMG_CALLS = """
res = {}
res["grids"] = [amg.build_all_layer_point_grids(*args) for args in inputs["grid_args"]]
res["crops"] = [amg.generate_crop_boxes(*args) for args in inputs["crop_args"]]
masks = inputs["masks"]
res["rles"] = amg.mask_to_rle_pytorch(masks)
res["decoded"] = [amg.rle_to_mask(rle) for rle in res["rles"]]
res["areas"] = [amg.area_from_rle(rle) for rle in res["rles"]]
res["coco"] = [amg.coco_encode_rle(rle) for rle in res["rles"]]
res["boxes"] = amg.batched_mask_to_box(masks)
res["boxes_4d"] = amg.batched_mask_to_box(masks.reshape(2, -1, *masks.shape[-2:]))
res["stability"] = amg.calculate_stability_score(inputs["logits"], 0.0, 0.7)
res["near_edge"] = amg.is_box_near_crop_edge(inputs["boxes"], inputs["crop"], inputs["orig"])
res["uncrop_boxes"] = amg.uncrop_boxes_xyxy(inputs["boxes"], inputs["crop"])
res["uncrop_points"] = amg.uncrop_points(inputs["points"], inputs["crop"])
res["uncrop_masks"] = amg.uncrop_masks(masks, inputs["crop"], 40, 50)
res["xywh"] = amg.box_xyxy_to_xywh(inputs["boxes"][0])
res["regions"] = [amg.remove_small_regions(m, t, mode) for m, t, mode in inputs["region_cases"]]
data = amg.MaskData(rles=list(res["rles"]), boxes=res["boxes"].clone(), scores=np.arange(len(masks)))
data.filter(torch.tensor([i % 2 == 0 for i in range(len(masks))]))
data.cat(amg.MaskData(rles=res["rles"][:2], boxes=res["boxes"][:2].clone(), scores=np.arange(2)))
data.filter(torch.tensor([3, 0, 1]))
res["maskdata"] = dict(data.items())
mask_data = amg.MaskData(rles=list(res["rles"]), boxes=res["boxes"].clone())
cleaned = SAM2AutomaticMaskGenerator.postprocess_small_regions(mask_data, 6, 0.7)
res["postprocessed"] = dict(cleaned.items())
outputs["res"] = res
"""
_AMG_SCRIPT = (
    _CV2_COMPONENTS
    + """
from sam2.utils import amg
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
"""
    + _AMG_CALLS
)


def _region_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, float, str]]:
    noisy = rng.random((30, 40)) > 0.6
    blob = np.zeros((30, 40), bool)
    blob[5:20, 5:25] = True
    blob[10:12, 10:12] = False  # a 4-pixel hole
    blob[25:27, 30:33] = True  # a 6-pixel island
    tiny = np.zeros((30, 40), bool)
    tiny[2:4, 2:4] = True
    tiny[20:23, 30:33] = True  # every island small: the largest stays
    tiny[10:13, 5:8] = True  # as large as the last: the first in raster order stays
    cases = []
    for mask in (noisy, blob, tiny):
        for thresh in (5, 7, 100):
            for mode in ("holes", "islands"):
                cases.append((mask, thresh, mode))
    return cases


def _assert_equal(ours, ref, where: str) -> None:
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor), where
        assert ours.dtype == ref.dtype and torch.equal(ours, ref), f"{where}: {ours} vs {ref}"
    elif isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == ref.dtype, where
        np.testing.assert_array_equal(ours, ref, err_msg=where)
    elif isinstance(ref, dict):
        assert set(ours) == set(ref), where
        for key in ref:
            _assert_equal(ours[key], ref[key], f"{where}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), f"{where}: {ours} vs {ref}"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _assert_equal(a, b, f"{where}[{i}]")
    else:
        assert type(ours) is type(ref) and ours == ref, f"{where}: {ours!r} vs {ref!r}"


def test_amg_helpers_match_the_official_ones(opencv_dir: str) -> None:
    rng = np.random.default_rng(3)
    masks = torch.from_numpy(rng.random((6, 40, 50)) > 0.5)
    masks[1] = False  # empty
    masks[2] = True  # full (RLE starts with a zero-length background run)
    masks[3] = False
    masks[3, 10:20, 5:45] = True
    masks[4] = False
    masks[4, 0, 0] = True
    inputs = {
        "grid_args": [(4, 0, 1), (6, 2, 2), (5, 1, 3), (32, 1, 1)],
        "crop_args": [((96, 128), 0, 512 / 1500), ((96, 128), 1, 512 / 1500), ((150, 97), 2, 0.3)],
        "masks": masks,
        "logits": torch.from_numpy(rng.normal(0, 2, (5, 20, 30)).astype(np.float32)),
        "boxes": torch.tensor([[0, 0, 10, 10], [15, 5, 49, 39], [30, 25, 45, 38], [21, 3, 40, 17]]),
        "crop": [20, 10, 50, 40],
        "orig": [0, 0, 50, 40],
        "points": torch.tensor([[1.5, 2.0], [7.0, 3.25]]),
        "region_cases": _region_cases(rng),
    }
    ref = run_oracle(_AMG_SCRIPT, {**inputs, "opencv_dir": opencv_dir})["res"]

    names = {"amg": amg, "SAM2AutomaticMaskGenerator": SAM2AutomaticMaskGenerator, "np": np, "torch": torch}
    outputs: dict = {}
    exec(_AMG_CALLS, {**names, "inputs": inputs, "outputs": outputs})
    ours = outputs["res"]

    assert any(changed for _, changed in ours["regions"]) and not all(c for _, c in ours["regions"])
    for key in ref:
        _assert_equal(ours[key], ref[key], key)


# ---- behaviour that needs no official numbers ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    ckpt = own_checkpoint(CONFIG, tmp_path_factory.mktemp("amg_own") / "tiny_own.pt", noise=STIRRED_NOISE)
    torch.set_num_threads(1)
    return build_sam2(CONFIG, str(ckpt), device="cpu", hydra_overrides_extra=SMALL_MODEL)


def test_output_modes_hold_the_same_masks(small_model: torch.nn.Module) -> None:
    loose = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95)
    by_mode = {
        mode: SAM2AutomaticMaskGenerator(small_model, output_mode=mode, **loose).generate(IMAGE)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    }
    binary = by_mode["binary_mask"]
    assert len(binary) >= 2
    for record in binary:
        assert record["segmentation"].shape == IMAGE.shape[:2] and record["segmentation"].dtype == bool
        x, y, w, h = record["bbox"]
        rows, cols = np.nonzero(record["segmentation"])
        assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max(), rows.max())
        assert record["area"] == int(record["segmentation"].sum())
        assert record["crop_box"] == [0, 0, IMAGE.shape[1], IMAGE.shape[0]]
        assert isinstance(record["predicted_iou"], float) and isinstance(record["stability_score"], float)
    for mode in ("uncompressed_rle", "coco_rle"):
        assert len(by_mode[mode]) == len(binary)
        for got, want in zip(by_mode[mode], binary, strict=True):
            np.testing.assert_array_equal(_as_mask(got["segmentation"], mode), want["segmentation"])
    assert isinstance(by_mode["coco_rle"][0]["segmentation"]["counts"], str)  # JSON-serialisable


def test_thresholds_filter_masks(small_model: torch.nn.Module) -> None:
    base = dict(points_per_side=4, box_nms_thresh=1.0, stability_score_offset=0.05)
    everything = SAM2AutomaticMaskGenerator(
        small_model, pred_iou_thresh=0.0, stability_score_thresh=0.0, **base
    ).generate(IMAGE)
    assert len(everything) >= 4
    ious = sorted(r["predicted_iou"] for r in everything)
    cut = (ious[len(ious) // 2 - 1] + ious[len(ious) // 2]) / 2
    confident = SAM2AutomaticMaskGenerator(
        small_model, pred_iou_thresh=cut, stability_score_thresh=0.0, **base
    ).generate(IMAGE)
    assert 0 < len(confident) < len(everything) and all(r["predicted_iou"] > cut for r in confident)
    stabilities = sorted(r["stability_score"] for r in everything)
    stable_cut = stabilities[len(stabilities) // 2]
    stable = SAM2AutomaticMaskGenerator(
        small_model, pred_iou_thresh=0.0, stability_score_thresh=stable_cut, **base
    ).generate(IMAGE)
    assert 0 < len(stable) < len(everything) and all(r["stability_score"] >= stable_cut for r in stable)
    # NMS: a lower box IoU cutoff removes more overlapping duplicates.
    fewer = SAM2AutomaticMaskGenerator(
        small_model, pred_iou_thresh=0.0, stability_score_thresh=0.0, **{**base, "box_nms_thresh": 0.3}
    ).generate(IMAGE)
    assert len(fewer) < len(everything)


def test_bad_settings_and_images_are_clear_errors(small_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="exactly one of points_per_side and point_grids"):
        SAM2AutomaticMaskGenerator(small_model, points_per_side=4, point_grids=[amg.build_point_grid(4)])
    with pytest.raises(ValueError, match="exactly one of points_per_side and point_grids"):
        SAM2AutomaticMaskGenerator(small_model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode must be one of"):
        SAM2AutomaticMaskGenerator(small_model, output_mode="polygons")
    with pytest.raises(ValueError, match="crop_n_layers=1 needs 2"):
        SAM2AutomaticMaskGenerator(
            small_model, points_per_side=None, point_grids=[amg.build_point_grid(2)], crop_n_layers=1
        )
    generator = SAM2AutomaticMaskGenerator(small_model, points_per_side=2)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        generator.generate(IMAGE[..., 0])
    # Unknown keyword arguments are accepted, as by the official constructor.
    SAM2AutomaticMaskGenerator(small_model, points_per_side=2, device="cpu")
