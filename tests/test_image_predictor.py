"""SAM2ImagePredictor gives the official package's masks, scores and low-res logits (tiny model, CPU, fp32,
no post-processing) for clicks, boxes, mask prompts and batches; bad prompts get clear errors; hole and
speck removal works without a compiled extension.

The model runs at image_size 256 (the official predictor hard-codes 1024-pixel feature sizes; the oracle
script overrides them for the same model). Only the comparisons with the official numbers need the oracle;
the other tests use weights our own package writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sam2_oracle import oracle_checkpoint, own_checkpoint, require_oracle, run_oracle

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.transforms import SAM2Transforms

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL_MODEL = ["++model.image_size=256"]
TOLERANCE = 1e-4  # max abs difference over the largest official value, per object (and per image)


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A textured RGB image with a bright rectangle (something for prompts to select)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([np.sin(xx / 9.0) * 100 + 120, np.cos(yy / 7.0) * 100 + 120, (xx + yy) % 200], axis=-1)
    image = image + rng.normal(0, 8, image.shape)
    image[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = [250, 30, 30]
    return np.clip(image, 0, 255).astype(np.uint8)


IMAGE = _scene(180, 240, seed=0)
OTHER_IMAGE = _scene(150, 130, seed=1)

SINGLE_IMAGE_CASES = {
    "one click, three masks": dict(
        point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]), multimask_output=True
    ),
    "two clicks, one mask": dict(
        point_coords=np.array([[120.0, 90.0], [15.0, 20.0]]),
        point_labels=np.array([1, 0]),
        multimask_output=False,
    ),
    "box": dict(box=np.array([70.0, 50.0, 170.0, 130.0]), multimask_output=False),
    "box and click": dict(
        box=np.array([70.0, 50.0, 170.0, 130.0]),
        point_coords=np.array([[120.0, 90.0]]),
        point_labels=np.array([1]),
        multimask_output=True,
    ),
    "normalised click": dict(
        point_coords=np.array([[0.5, 0.5]]), point_labels=np.array([1]), normalize_coords=False
    ),
    "two objects at once": dict(
        point_coords=np.array([[[120.0, 90.0]], [[30.0, 150.0]]]),
        point_labels=np.array([[1], [1]]),
        box=np.array([[70.0, 50.0, 170.0, 130.0], [0.0, 100.0, 80.0, 179.0]]),
        multimask_output=False,
    ),
}
BATCH_PROMPTS = dict(
    point_coords_batch=[np.array([[120.0, 90.0]]), np.array([[60.0, 70.0], [10.0, 10.0]])],
    point_labels_batch=[np.array([1]), np.array([1, 0])],
    multimask_output=True,
)

_ORACLE_SCRIPT = """
import numpy as np
from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor
model = build_sam2(inputs["config"], inputs["ckpt"], device="cpu", hydra_overrides_extra=inputs["overrides"],
                   apply_postprocessing=False)
predictor = SAM2ImagePredictor(model)
side = model.image_size
predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
predictor.set_image(inputs["image"])
outputs["embedding"] = predictor.get_image_embedding().clone()
single = {}
for name, prompt in inputs["cases"].items():
    single[name] = predictor.predict(**prompt, return_logits=True)
first_low_res = single["one click, three masks"][2]
best = int(np.argmax(single["one click, three masks"][1]))
single["mask prompt"] = predictor.predict(
    point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]),
    mask_input=first_low_res[best][None], multimask_output=False, return_logits=True)
single["binary"] = predictor.predict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]))
outputs["single"] = single
predictor.set_image_batch([inputs["image"], inputs["other"]])
outputs["batch"] = predictor.predict_batch(**inputs["batch"], return_logits=True)
"""


@pytest.fixture(scope="module")
def official_checkpoint() -> Path:
    """Weights the official package wrote (for the comparisons with its numbers)."""
    require_oracle()
    return oracle_checkpoint(CONFIG)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights our own package wrote: for the tests that need no official numbers."""
    return own_checkpoint(CONFIG, tmp_path_factory.mktemp("own_ckpt") / "tiny_own.pt")


@pytest.fixture(scope="module")
def official(official_checkpoint: Path) -> dict:
    return run_oracle(
        _ORACLE_SCRIPT,
        {
            "config": CONFIG,
            "ckpt": str(official_checkpoint),
            "overrides": SMALL_MODEL,
            "image": IMAGE,
            "other": OTHER_IMAGE,
            "cases": SINGLE_IMAGE_CASES,
            "batch": BATCH_PROMPTS,
        },
    )


def _small_predictor(checkpoint: Path) -> SAM2ImagePredictor:
    model = build_sam2(
        CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SMALL_MODEL, apply_postprocessing=False
    )
    return SAM2ImagePredictor(model)


@pytest.fixture(scope="module")
def official_predictor(official_checkpoint: Path) -> SAM2ImagePredictor:
    """Our predictor on the official package's weights."""
    return _small_predictor(official_checkpoint)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> SAM2ImagePredictor:
    """Our predictor on our own weights."""
    return _small_predictor(checkpoint)


def _per_object_errors(ours: np.ndarray, ref: np.ndarray, num_objects: int) -> list[float]:
    """Per object (the leading `num_objects` rows): max abs difference over that object's largest official
    value, so an object with small logits is held to the same 1e-4 as the largest one."""
    ours64 = ours.astype(np.float64).reshape(num_objects, -1)
    ref64 = ref.astype(np.float64).reshape(num_objects, -1)
    scale = np.maximum(np.abs(ref64).max(axis=1), 1e-12)
    return (np.abs(ours64 - ref64).max(axis=1) / scale).tolist()


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str, num_objects: int = 1) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs official {ref.shape}"
    errors = _per_object_errors(ours, ref, num_objects)
    # `not err <= TOLERANCE` so that a NaN fails too.
    bad = [idx for idx, err in enumerate(errors) if not err <= TOLERANCE]
    assert not bad, f"{what}: objects {bad} off; per-object max relative differences {errors}"


def _assert_outputs_close(ours: tuple, ref: tuple, what: str) -> None:
    """One predict() result (one image): masks, scores and low-res logits, each object on its own scale.

    Several objects come back as [N, C, ...] with scores [N, C]; one object as [C, ...] with scores [C]."""
    ref_masks, ref_scores, ref_low_res = ref
    assert ref_masks.ndim == ref_low_res.ndim == ref_scores.ndim + 2, f"{what}: unexpected official shapes"
    num_objects = ref_scores.shape[0] if ref_scores.ndim == 2 else 1
    for name, ours_part, ref_part in zip(("masks", "ious", "low-res logits"), ours, ref, strict=True):
        _assert_close(ours_part, ref_part, f"{what} {name}", num_objects)


def test_comparison_holds_each_object_to_its_own_scale() -> None:
    """The oracle comparisons catch a drift of 1e-3 (relative) on an object whose logits are 400 times
    smaller than another's in the same call, which a tolerance on the whole array's largest value misses."""
    rng = np.random.default_rng(0)
    magnitudes = np.array([20.0, 0.05])
    masks = (rng.standard_normal((2, 1, 12, 16)) * magnitudes[:, None, None, None]).astype(np.float32)
    low_res = (rng.standard_normal((2, 1, 8, 8)) * magnitudes[:, None, None, None]).astype(np.float32)
    scores = np.array([[0.9], [0.004]], dtype=np.float32)
    ref = (masks, scores, low_res)
    _assert_outputs_close(tuple(part.copy() for part in ref), ref, "identical")

    for part_idx, name in enumerate(("masks", "ious", "low-res logits")):
        drifted = [part.copy() for part in ref]
        small = drifted[part_idx][1]
        small.flat[0] += 1e-3 * np.abs(small).max()
        whole_array = np.abs(drifted[part_idx] - ref[part_idx]).max() / np.abs(ref[part_idx]).max()
        assert whole_array <= TOLERANCE, "the drift should pass a whole-array tolerance"
        with pytest.raises(AssertionError, match=rf"{name}: objects \[1\] off"):
            _assert_outputs_close(tuple(drifted), ref, "drifted")

    # One object ([C, H, W], scores [C]): its masks together are the object; a NaN never passes.
    single = (masks[:, 0], scores[:, 0], low_res[:, 0])
    _assert_outputs_close(single, single, "one object")
    with_nan = (single[0].copy(), single[1], single[2])
    with_nan[0][1, 0, 0] = np.nan
    with pytest.raises(AssertionError, match=r"masks: objects \[0\] off"):
        _assert_outputs_close(with_nan, single, "one object")


def test_single_image_prompts_match_official(official_predictor: SAM2ImagePredictor, official: dict) -> None:
    predictor = official_predictor
    predictor.set_image(IMAGE)
    embedding = predictor.get_image_embedding()
    assert embedding.shape == (1, 256, 16, 16)
    _assert_close(embedding.numpy(), official["embedding"].numpy(), "image embedding")
    ref = official["single"]
    results = {
        name: predictor.predict(**prompt, return_logits=True) for name, prompt in SINGLE_IMAGE_CASES.items()
    }
    for name, ours in results.items():
        _assert_outputs_close(ours, ref[name], name)

    masks, scores, low_res = results["one click, three masks"]
    assert masks.shape == (3, 180, 240) and scores.shape == (3,) and low_res.shape == (3, 64, 64)
    assert np.abs(low_res).max() <= 32.0
    assert results["two objects at once"][0].shape == (2, 1, 180, 240)

    best = int(np.argmax(scores))
    with_mask = predictor.predict(
        point_coords=np.array([[120.0, 90.0]]),
        point_labels=np.array([1]),
        mask_input=low_res[best][None],
        multimask_output=False,
        return_logits=True,
    )
    _assert_outputs_close(with_mask, ref["mask prompt"], "mask prompt")

    binary = predictor.predict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]))
    # As in the official package, thresholded masks come back as float32 zeros and ones.
    assert binary[0].dtype == np.float32 and set(np.unique(binary[0])) <= {0.0, 1.0}
    # Thresholded masks agree except where the official logit is within float noise of 0.
    ref_logits = ref["one click, three masks"][0]
    decided = np.abs(ref_logits) > 1e-3
    assert np.array_equal(binary[0][decided], ref["binary"][0][decided])


def test_image_batch_matches_official(official_predictor: SAM2ImagePredictor, official: dict) -> None:
    predictor = official_predictor
    predictor.set_image_batch([IMAGE, OTHER_IMAGE])
    assert predictor.get_image_embedding().shape[0] == 2
    ours = predictor.predict_batch(**BATCH_PROMPTS, return_logits=True)
    ref = official["batch"]
    for image_idx in range(2):
        _assert_outputs_close(
            tuple(part[image_idx] for part in ours),
            tuple(part[image_idx] for part in ref),
            f"image {image_idx}",
        )
    assert ours[0][1].shape == (3, 150, 130)


def test_bad_prompts_give_clear_errors(predictor: SAM2ImagePredictor) -> None:
    predictor.reset_predictor()
    with pytest.raises(RuntimeError, match=r"set_image"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor.set_image(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        predictor.set_image("frame.jpg")

    predictor.set_image(IMAGE)
    with pytest.raises(ValueError, match=r"mask_input must be low-resolution logits shaped \[1, 64, 64\]"):
        predictor.predict(mask_input=np.zeros((1, 256, 256), dtype=np.float32))
    with pytest.raises(ValueError, match="point_labels must be supplied"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"point_coords must be \[N, 2\]"):
        predictor.predict(point_coords=np.array([[1.0, 1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="XYXY"):
        predictor.predict(box=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictor.predict_batch(**BATCH_PROMPTS)


def test_hole_and_speck_removal_without_compiled_extension() -> None:
    logits = torch.full((1, 1, 32, 32), -5.0)
    logits[..., 4:20, 4:20] = 5.0
    logits[..., 10:12, 10:12] = -5.0  # a 4-pixel hole inside the object
    logits[..., 28:30, 28:29] = 5.0  # a 2-pixel speck in the background
    plain = SAM2Transforms(resolution=128, mask_threshold=0.0)
    cleaned = SAM2Transforms(resolution=128, mask_threshold=0.0, max_hole_area=8, max_sprinkle_area=4)

    untouched = plain.postprocess_masks(logits, (32, 32))
    assert torch.equal(untouched, logits)
    out = cleaned.postprocess_masks(logits, (32, 32))
    assert (out[..., 10:12, 10:12] > 0).all(), "hole not filled"
    assert (out[..., 28:30, 28:29] < 0).all(), "speck not removed"
    assert (out[..., 4:10, 4:20] > 0).all() and (out[..., 0:3, :] < 0).all(), "object or background changed"
    # A large background region and the object itself stay as they are.
    big_hole = logits.clone()
    big_hole[..., 6:18, 6:18] = -5.0
    assert (cleaned.postprocess_masks(big_hole, (32, 32))[..., 6:18, 6:18] < 0).all()
    # Upscaling to the original size is bilinear on the cleaned logits.
    assert cleaned.postprocess_masks(logits, (64, 48)).shape == (1, 1, 64, 48)


def test_predictor_applies_hole_filling(predictor: SAM2ImagePredictor) -> None:
    filling = SAM2ImagePredictor(predictor.model, max_hole_area=64.0, max_sprinkle_area=64.0)
    filling.set_image(IMAGE)
    predictor.set_image(IMAGE)
    prompt = dict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]), multimask_output=False)
    raw = predictor.predict(**prompt, return_logits=True)
    cleaned = filling.predict(**prompt, return_logits=True)
    # Low-resolution outputs are the raw decoder logits either way; only the full-size masks are cleaned.
    np.testing.assert_array_equal(cleaned[2], raw[2])
    assert np.abs(raw[2]).max() < 32.0, "logits were clamped; the check below needs unclamped ones"
    low_res = torch.from_numpy(raw[2])[None]
    expected = SAM2Transforms(256, 0.0, 64.0, 64.0).postprocess_masks(low_res, (180, 240))[0].numpy()
    np.testing.assert_allclose(cleaned[0], expected, rtol=0, atol=1e-5)
    changed = SAM2Transforms(256, 0.0).postprocess_masks(low_res, (180, 240))[0].numpy() != expected
    assert changed.any(), "the clean-up had nothing to do; pick a prompt with holes or specks"


@pytest.mark.slow
def test_full_resolution_model_matches_official(official_checkpoint: Path) -> None:
    """The released 1024-pixel setting, with the official predictor unmodified."""
    cases = {name: SINGLE_IMAGE_CASES[name] for name in ("one click, three masks", "box")}
    ref = run_oracle(
        """
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        model = build_sam2(inputs["config"], inputs["ckpt"], device="cpu", apply_postprocessing=False)
        predictor = SAM2ImagePredictor(model)
        predictor.set_image(inputs["image"])
        outputs.update({name: predictor.predict(**p, return_logits=True) for name, p in inputs["cases"].items()})
        """,
        {"config": CONFIG, "ckpt": str(official_checkpoint), "image": IMAGE, "cases": cases},
    )
    model = build_sam2(CONFIG, official_checkpoint, device="cpu", apply_postprocessing=False)
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(IMAGE)
    for name, prompt in cases.items():
        _assert_outputs_close(predictor.predict(**prompt, return_logits=True), ref[name], name)


def _sign_agreement(a: np.ndarray, b: np.ndarray, margin: float = 1.0) -> float:
    decided = (np.abs(a) > margin) & (np.abs(b) > margin)
    return float(((a > 0) == (b > 0))[decided].mean())


@pytest.mark.gpu
def test_cuda_bf16_autocast_is_used_and_stays_close_to_fp32(
    checkpoint: Path, predictor: SAM2ImagePredictor
) -> None:
    prompt = dict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]), return_logits=True)
    predictor.set_image(IMAGE)
    cpu = predictor.predict(**prompt)
    model = build_sam2(
        CONFIG, checkpoint, device="cuda", hydra_overrides_extra=SMALL_MODEL, apply_postprocessing=False
    )
    fp32 = SAM2ImagePredictor(model, use_bf16=False)
    fp32.set_image(IMAGE)
    fp32_out = fp32.predict(**prompt)
    bf16 = SAM2ImagePredictor(model)  # bf16 autocast by default on a GPU that supports it
    bf16.set_image(IMAGE)
    bf16_out = bf16.predict(**prompt)
    assert all(part.dtype == np.float32 for part in bf16_out)
    # fp32 on the GPU (TF32 convolutions allowed) is close to the CPU; bf16 differs a little but agrees.
    assert np.abs(fp32_out[0] - cpu[0]).max() <= 1e-2 * np.abs(cpu[0]).max()
    assert not np.array_equal(bf16_out[0], fp32_out[0]), "bf16 autocast was not applied"
    assert _sign_agreement(bf16_out[0], fp32_out[0]) >= 0.98


@pytest.mark.gpu
def test_compiled_image_encoder_matches_eager_on_cuda(checkpoint: Path) -> None:
    eager = SAM2ImagePredictor(
        build_sam2(
            CONFIG, checkpoint, device="cuda", hydra_overrides_extra=SMALL_MODEL, apply_postprocessing=False
        ),
        use_bf16=False,
    )
    compiled = SAM2ImagePredictor(
        build_sam2(
            CONFIG,
            checkpoint,
            device="cuda",
            hydra_overrides_extra=[*SMALL_MODEL, "++model.compile_image_encoder=true"],
            apply_postprocessing=False,
        ),
        use_bf16=False,
    )
    eager.set_image(IMAGE)
    compiled.set_image(IMAGE)
    ref = eager.get_image_embedding()
    assert (compiled.get_image_embedding() - ref).abs().max() <= 1e-2 * ref.abs().max()
