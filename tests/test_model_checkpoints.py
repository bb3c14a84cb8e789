"""Official SAM 2 / 2.1 checkpoints load strictly through our build_sam2, configs carry the official values,
and checkpoint or config mistakes give errors that say what to do.

The official `sam2==1.1.0` package (tests/sam2_oracle.py, run in a subprocess) writes random-weight
checkpoints in the official layout: every size's checkpoint loads strictly by default; the image-encoder
comparison of the two large sizes is `slow`. The error-message tests need no oracle: their checkpoints
come from our own package, whose parameter layout the tests here check against the official one.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2_oracle import oracle_checkpoint, own_checkpoint, require_oracle, run_oracle

from sam2.build_sam import (
    CheckpointMismatchError,
    available_model_configs,
    build_sam2,
    build_sam2_video_predictor,
    compose_model_config,
)

SIZES = ("t", "s", "b+", "l")
SAM21 = {size: f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in SIZES}
SAM20 = {size: f"configs/sam2/sam2_hiera_{size}.yaml" for size in SIZES}

# Keys our configs state explicitly although the official ones leave them at the constructor default,
# with that default.
_EXPLICIT_DEFAULTS = {
    "image_encoder.trunk.window_spec": [8, 4, 14, 7],
    "image_encoder.trunk.window_pos_embed_bkg_spatial_size": [14, 14],
    "image_encoder.trunk.stages": [2, 3, 16, 3],
    "image_encoder.trunk.global_att_blocks": [12, 16, 20],
    "no_obj_embed_spatial": False,
    "proj_tpos_enc_in_obj_ptrs": False,
    "use_signed_tpos_enc_to_obj_ptrs": False,
}

# Skips parameter initialisation (the slow part of building the large models) where only the parameter
# layout matters. Used identically in this process and in the oracle subprocess.
_NO_INIT_SOURCE = """
import contextlib
import torch

@contextlib.contextmanager
def no_weight_init():
    names = ["kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "constant_"]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)
"""
_no_init_namespace: dict = {}
exec(_NO_INIT_SOURCE, _no_init_namespace)
no_weight_init = _no_init_namespace["no_weight_init"]


@pytest.fixture(scope="module")
def oracle_dir() -> Path:
    return require_oracle()


@pytest.fixture(scope="module")
def tiny_checkpoint(oracle_dir: Path) -> Path:
    """SAM 2.1 tiny, written by the official package."""
    return oracle_checkpoint(SAM21["t"])


@pytest.fixture(scope="module")
def own_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAM 2.1 tiny, written by our own package (same layout, no oracle needed)."""
    return own_checkpoint(SAM21["t"], tmp_path_factory.mktemp("own_ckpt") / "sam2.1_tiny_own.pt")


def _flatten(cfg: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def test_configs_state_the_official_values(oracle_dir: Path) -> None:
    names = list(SAM21.values()) + list(SAM20.values())
    official = run_oracle(
        """
        from hydra import compose
        from omegaconf import OmegaConf
        for name in inputs["names"]:
            cfg = compose(config_name=name)
            OmegaConf.resolve(cfg)
            outputs[name] = OmegaConf.to_container(cfg.model)
        """,
        {"names": names},
    )
    for name in names:
        ours = _flatten(OmegaConf.to_container(compose_model_config(name).model))
        ref = _flatten(official[name])
        differing = {k: (ours.get(k), ref[k]) for k in ref if ours.get(k) != ref[k]}
        assert not differing, f"{name}: (ours, official) {differing}"
        extra = {k: v for k, v in ours.items() if k not in ref}
        assert extra == {k: _EXPLICIT_DEFAULTS[k] for k in extra}, f"{name}: unexpected extra keys {extra}"


def test_parameter_layout_matches_official_for_every_size(oracle_dir: Path) -> None:
    configs = list(SAM21.values()) + [SAM20["t"]]
    official = run_oracle(
        _NO_INIT_SOURCE
        + textwrap.dedent(
            """
        from hydra import compose
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        for name in inputs["names"]:
            cfg = compose(config_name=name)
            OmegaConf.resolve(cfg)
            with no_weight_init():
                model = instantiate(cfg.model, _recursive_=True)
            outputs[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        """
        ),
        {"names": configs},
    )
    for name in configs:
        with no_weight_init():
            model = instantiate(compose_model_config(name).model, _recursive_=True)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert list(ours) == list(official[name]), f"{name}: parameter names or order differ"
        assert ours == official[name], f"{name}: parameter shapes differ"


def _roundtrip_and_encode(size: str, tmp_path: Path, ckpt: Path | None = None) -> None:
    """Official random-weight checkpoint -> our build_sam2 (strict) -> same image-encoder output."""
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(SIZES.index(size)))
    if ckpt is None:
        ckpt = tmp_path / f"official_{size}.pt"
        make = True
    else:
        make = False
    official = run_oracle(
        """
        from sam2.build_sam import build_sam2
        torch.manual_seed(0)
        if inputs["make"]:
            model = build_sam2(inputs["config"], None, device="cpu", apply_postprocessing=False)
            gen = torch.Generator().manual_seed(1)
            state = model.state_dict()
            for value in state.values():
                if value.is_floating_point():
                    value.add_(0.02 * torch.randn(value.shape, generator=gen))
            torch.save({"model": state}, inputs["ckpt"])
        else:
            model = build_sam2(inputs["config"], inputs["ckpt"], device="cpu", apply_postprocessing=False)
        with torch.no_grad():
            outputs["encoded"] = model.image_encoder(inputs["pixels"])
        """,
        {"config": SAM21[size], "ckpt": str(ckpt), "make": make, "pixels": pixels},
    )
    model = build_sam2(SAM21[size], ckpt, device="cpu", apply_postprocessing=False)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    ours_state = model.state_dict()
    assert set(ours_state) == set(stored)
    assert all(torch.equal(ours_state[k], stored[k]) for k in stored)
    with torch.no_grad():
        encoded = model.image_encoder(pixels)
    ref = official["encoded"]
    for ours_t, ref_t in zip(
        encoded["backbone_fpn"] + encoded["vision_pos_enc"],
        ref["backbone_fpn"] + ref["vision_pos_enc"],
        strict=True,
    ):
        assert ours_t.shape == ref_t.shape
        assert (ours_t - ref_t).abs().max() <= 1e-4 * ref_t.abs().max()
    assert torch.equal(encoded["vision_features"], encoded["backbone_fpn"][-1])


def test_tiny_checkpoint_loads_strictly_and_encodes_like_official(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    _roundtrip_and_encode("t", tmp_path, ckpt=tiny_checkpoint)


def test_small_checkpoint_loads_strictly_and_encodes_like_official(oracle_dir: Path, tmp_path: Path) -> None:
    _roundtrip_and_encode("s", tmp_path)


@pytest.mark.parametrize("size", ["b+", "l"])
def test_large_checkpoints_load_strictly(
    oracle_dir: Path, tmp_path: Path, size: str, request: pytest.FixtureRequest
) -> None:
    """The official package's b+ / l checkpoint (its own default init) through our build_sam2 (strict):
    the same parameter names, and every value lands where the file put it."""
    ckpt = tmp_path / f"official_{size}.pt"  # 0.3 / 0.9 GB: removed at the end, not kept by pytest
    request.addfinalizer(lambda: ckpt.unlink(missing_ok=True))
    official = run_oracle(
        """
        from sam2.build_sam import build_sam2
        torch.manual_seed(0)
        model = build_sam2(inputs["config"], None, device="cpu", apply_postprocessing=False)
        torch.save({"model": model.state_dict()}, inputs["ckpt"])
        outputs["names"] = list(model.state_dict())
        """,
        {"config": SAM21[size], "ckpt": str(ckpt)},
    )
    model = build_sam2(SAM21[size], ckpt, device="cpu", apply_postprocessing=False)
    ours_state = model.state_dict()
    assert list(ours_state) == official["names"]
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(ours_state[k], stored[k]) for k in stored)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["b+", "l"])
def test_large_checkpoints_encode_like_official(
    oracle_dir: Path, tmp_path: Path, size: str, request: pytest.FixtureRequest
) -> None:
    request.addfinalizer(lambda: (tmp_path / f"official_{size}.pt").unlink(missing_ok=True))
    _roundtrip_and_encode(size, tmp_path)


def test_sam20_checkpoint_in_sam21_config_names_keys_and_the_right_config(tmp_path: Path) -> None:
    sam20_ckpt = own_checkpoint(SAM20["t"], tmp_path / "sam2_tiny_own.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        build_sam2(SAM21["t"], sam20_ckpt, device="cpu")
    message = str(info.value)
    assert "missing keys" in message and "no_obj_embed_spatial" in message
    assert "obj_ptr_tpos_proj.weight" in message
    assert "SAM 2.0 checkpoint" in message and SAM20["t"] in message
    # ... and it loads strictly with the config the message names.
    build_sam2(SAM20["t"], sam20_ckpt, device="cpu")


def test_sam21_checkpoint_in_sam20_config_names_the_right_config(own_tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        build_sam2_video_predictor(SAM20["t"], own_tiny_checkpoint, device="cpu")
    message = str(info.value)
    assert "unexpected keys" in message and "no_obj_embed_spatial" in message
    assert "SAM 2.1 checkpoint" in message and SAM21["t"] in message


def test_checkpoint_of_another_size_names_the_fitting_config(own_tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointMismatchError) as info:
        build_sam2(SAM21["s"], own_tiny_checkpoint, device="cpu")
    message = str(info.value)
    assert "missing keys" in message and "image_encoder.trunk.blocks.12" in message
    assert SAM21["t"] in message


def test_checkpoint_saved_from_ddp_wrapper_says_so(own_tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(own_tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    wrapped = tmp_path / "ddp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    with pytest.raises(CheckpointMismatchError, match="'module.' prefix of DistributedDataParallel"):
        build_sam2(SAM21["t"], wrapped, device="cpu")


def test_missing_checkpoint_file_and_unknown_config_are_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(FileNotFoundError, match="sam2.1_hiera_tiny.pt"):
        build_sam2(SAM21["t"], missing, device="cpu")
    with pytest.raises(FileNotFoundError) as info:
        build_sam2("configs/sam2.1/sam2.1_hiera_xl.yaml", device="cpu")
    assert "sam2.1_hiera_xl.yaml" in str(info.value) and SAM21["b+"] in str(info.value)
    assert set(SAM21.values()) | set(SAM20.values()) <= set(available_model_configs())


def test_bad_device_and_mode_are_clear() -> None:
    with pytest.raises(ValueError, match="mode must be 'eval' or 'train'"):
        build_sam2(SAM21["t"], device="cpu", mode="inference")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cpu'"):
            build_sam2(SAM21["t"])  # the official default device is "cuda"


def test_file_that_is_not_a_sam2_checkpoint_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match=r"not a \{'model': state_dict\}"):
        build_sam2(SAM21["t"], bad, device="cpu")


def test_build_leaves_callers_hydra_state_alone(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    assert not GlobalHydra.instance().is_initialized()
    build_sam2(SAM21["t"], device="cpu", hydra_overrides_extra=["++model.image_size=256"])
    assert not GlobalHydra.instance().is_initialized()

    (tmp_path / "app.yaml").write_text("greeting: hello\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.2"):
        model = build_sam2(SAM21["t"], device="cpu", mode="train", apply_postprocessing=False)
        assert model.training
        assert compose(config_name="app").greeting == "hello"
    assert not GlobalHydra.instance().is_initialized()


def test_postprocessing_overrides_reach_the_model() -> None:
    image_model = build_sam2(SAM21["t"], device="cpu", hydra_overrides_extra=["++model.image_size=256"])
    decoder = image_model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability
    assert decoder.dynamic_multimask_stability_delta == 0.05
    assert decoder.dynamic_multimask_stability_thresh == 0.98
    assert not image_model.training
    plain = build_sam2(SAM21["t"], device="cpu", apply_postprocessing=False)
    assert not plain.sam_mask_decoder.dynamic_multimask_via_stability

    from sam2.sam2_video_predictor import SAM2VideoPredictor

    video_model = build_sam2_video_predictor(SAM21["t"], device="cpu")
    assert isinstance(video_model, SAM2VideoPredictor)
    assert video_model.sam_mask_decoder.dynamic_multimask_via_stability
    assert video_model.binarize_mask_from_pts_for_mem_enc
    assert video_model.fill_hole_area == 8
    plain_video = build_sam2_video_predictor(SAM21["t"], device="cpu", apply_postprocessing=False)
    assert not plain_video.binarize_mask_from_pts_for_mem_enc and plain_video.fill_hole_area == 0


def test_checkpoint_from_object_storage(
    own_tiny_checkpoint: Path, s3_store, s3_bucket: str, s3_env: dict
) -> None:
    from sam2.storage import StorageNotFoundError

    uri = f"s3://{s3_bucket}/runs/r1/checkpoints/checkpoint.pt"
    s3_store.upload_file(own_tiny_checkpoint, uri)
    model = build_sam2(SAM21["t"], uri, device="cpu", apply_postprocessing=False)
    stored = torch.load(own_tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(model.state_dict()["no_obj_embed_spatial"], stored["no_obj_embed_spatial"])
    with pytest.raises(StorageNotFoundError):
        build_sam2(SAM21["t"], f"s3://{s3_bucket}/runs/none/checkpoint.pt", device="cpu")
