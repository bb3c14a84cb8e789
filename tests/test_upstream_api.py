"""Every public module, class, function, method and parameter (with its default) of the official
`sam2==1.1.0` package exists here too, so a script written for it finds what it calls.

The official API is read from the oracle package in a subprocess (it cannot be imported next to ours); the
same walker reads ours in this process. A public name is one without a leading underscore, defined in that
module (not imported into it); for classes, their public methods and properties (what torch.nn.Module
already provides is left out) and `__init__`. A parameter counts as present when ours has the same name
(positional ones at the same position) and the same default; `**kwargs` and `*args` must be there where
the official signature has them. Our own extra parameters must have defaults, so official calls still work.

What we lack on purpose is listed in KNOWN_GAPS with the reason; the test fails on any other gap, and on a
listed gap that no longer exists (so the list stays true).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
import pytest
import torch
from sam2_oracle import require_oracle, run_oracle

# `sam2.benchmark` is a script (it runs a benchmark on CUDA when imported), not an API.
SKIPPED_MODULES = ("sam2.benchmark",)

KNOWN_GAPS = {
    "sam2.sam2_video_predictor_legacy: module missing": (
        "the pre-2.1 video predictor, kept upstream for old scripts; SAM2VideoPredictor offers the same "
        "session API (init_state, add_new_points_or_box, add_new_mask, propagate_in_video, reset_state)"
    ),
    "sam2.modeling.backbones.hieradet.do_pool: missing": (
        "an internal helper of Hiera's pooled attention (pool a channels-last map, then normalise); ours "
        "is private (_pool_channels_last) and the model's parameters and outputs are the official ones"
    ),
    "sam2.modeling.position_encoding.PositionEmbeddingSine.encode: missing": (
        "SAM 1's sine encoding of prompt coordinates; SAM 2 never calls it (prompts use "
        "PositionEmbeddingRandom, which we have)"
    ),
    "sam2.modeling.position_encoding.PositionEmbeddingSine.encode_boxes: missing": (
        "as PositionEmbeddingSine.encode: unused by SAM 2"
    ),
    "sam2.modeling.position_encoding.PositionEmbeddingSine.encode_points: missing": (
        "as PositionEmbeddingSine.encode: unused by SAM 2"
    ),
    "sam2.modeling.position_encoding.init_t_xy: missing": (
        "an internal step of compute_axial_cis (the RoPE frequency table), which we have with the official "
        "signature"
    ),
    "sam2.modeling.position_encoding.reshape_for_broadcast: missing": (
        "an internal step of apply_rotary_enc, which we have with the official signature"
    ),
    "sam2.modeling.sam2_utils.get_clones(N): missing": (
        "the layer count is named n (PEP 8); the official code and configs pass it positionally"
    ),
    "sam2.modeling.sam2_utils.get_clones(n): an extra parameter without a default": (
        "the same parameter as get_clones(N) above, under its PEP 8 name"
    ),
}


def _default(param: inspect.Parameter) -> str | None:
    if param.default is inspect.Parameter.empty:
        return None
    value = param.default
    if isinstance(value, torch.device):
        return f"device:{value}"
    return f"{type(value).__name__}:{value!r}"[:200]


def _signature(fn: Any) -> list[list] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, _default(p)] for p in params]


def walk_api(modules: list[str]) -> dict[str, dict[str, dict]]:
    """{module: {public name: {"kind": "class"|"function", "signature" | "members"}}} for `modules`."""
    inherited = set(dir(torch.nn.Module)) | set(dir(object))
    api: dict[str, dict[str, dict]] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        entries = {}
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isclass(obj):
                members: dict[str, list] = {"__init__": ["method", _signature(obj.__init__)]}
                for attr in dir(obj):
                    if attr.startswith("_") or attr in inherited:
                        continue
                    raw = inspect.getattr_static(obj, attr)
                    if isinstance(raw, staticmethod | classmethod):
                        members[attr] = ["method", _signature(getattr(obj, attr))]
                    elif inspect.isfunction(raw):
                        members[attr] = ["method", _signature(raw)]
                    elif isinstance(raw, property):
                        members[attr] = ["property", None]
                entries[name] = {"kind": "class", "members": members}
            elif inspect.isfunction(obj):
                entries[name] = {"kind": "function", "signature": _signature(obj)}
        api[module_name] = entries
    return api


def _signature_gaps(path: str, official: list[list] | None, ours: list[list] | None) -> list[str]:
    if official is None or ours is None:
        return []
    gaps = []
    ours_by_name = {p[0]: (i, p) for i, p in enumerate(ours)}
    has_var_kw = any(p[1] == "VAR_KEYWORD" for p in ours)
    for position, (name, kind, default) in enumerate(official):
        if kind in ("VAR_KEYWORD", "VAR_POSITIONAL"):
            if not any(p[1] == kind for p in ours):
                gaps.append(f"{path}: no {'**kwargs' if kind == 'VAR_KEYWORD' else '*args'}")
            continue
        if name not in ours_by_name:
            gaps.append(f"{path}({name}): {'only through **kwargs' if has_var_kw else 'missing'}")
            continue
        our_position, (_, our_kind, our_default) = ours_by_name[name]
        if kind == "POSITIONAL_OR_KEYWORD" and (our_kind != kind or our_position != position):
            gaps.append(f"{path}({name}): at position {our_position} ({our_kind}), officially {position}")
        if default != our_default:
            gaps.append(f"{path}({name}): default {our_default}, officially {default}")
    official_names = {p[0] for p in official}
    for name, kind, default in ours:
        if (
            name not in official_names
            and default is None
            and kind in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")
        ):
            gaps.append(f"{path}({name}): an extra parameter without a default")
    return gaps


def api_gaps(official: dict[str, dict[str, dict]]) -> list[str]:
    """What the official API has that ours lacks (see the module docstring)."""
    gaps = []
    for module_name, entries in official.items():
        try:
            ours = walk_api([module_name])[module_name]
        except ModuleNotFoundError:
            gaps.append(f"{module_name}: module missing")
            continue
        for name, entry in entries.items():
            path = f"{module_name}.{name}"
            mine = ours.get(name)
            if mine is None:
                gaps.append(f"{path}: missing")
                continue
            if mine["kind"] != entry["kind"]:
                gaps.append(f"{path}: a {mine['kind']}, officially a {entry['kind']}")
                continue
            if entry["kind"] == "function":
                gaps += _signature_gaps(path, entry["signature"], mine["signature"])
                continue
            for member, (member_kind, signature) in entry["members"].items():
                our_member = mine["members"].get(member)
                if our_member is None:
                    gaps.append(f"{path}.{member}: missing")
                elif our_member[0] != member_kind:
                    gaps.append(f"{path}.{member}: a {our_member[0]}, officially a {member_kind}")
                else:
                    gaps += _signature_gaps(f"{path}.{member}", signature, our_member[1])
    return gaps


_ORACLE_WALK = """
import pkgutil
import sam2
walker = {}
exec(inputs["walker_source"], walker)
modules = ["sam2"] + sorted(
    m.name for m in pkgutil.walk_packages(sam2.__path__, "sam2.") if m.name not in inputs["skipped"]
)
outputs["api"] = walker["walk_api"](modules)
"""


def _walker_source() -> str:
    """The walker's own source, run unchanged inside the oracle subprocess."""
    header = "from __future__ import annotations\nimport importlib\nimport inspect\nfrom typing import Any\nimport torch\n"
    return header + "\n\n".join(inspect.getsource(fn) for fn in (_default, _signature, walk_api))


@pytest.fixture(scope="module")
def official_api() -> dict[str, dict[str, dict]]:
    require_oracle()
    api = run_oracle(_ORACLE_WALK, {"walker_source": _walker_source(), "skipped": list(SKIPPED_MODULES)})[
        "api"
    ]
    assert {"sam2.automatic_mask_generator", "sam2.utils.amg", "sam2.build_sam"} <= set(api)
    assert len(api["sam2.utils.amg"]) >= 15, "the walker found too little; it is broken"
    return api


def test_we_have_every_public_name_and_parameter_of_the_official_package(official_api: dict) -> None:
    gaps = api_gaps(official_api)
    unexpected = [gap for gap in gaps if gap not in KNOWN_GAPS]
    assert not unexpected, (
        "missing from our package (add it, or list it in KNOWN_GAPS with why):\n" + "\n".join(unexpected)
    )
    stale = sorted(set(KNOWN_GAPS) - set(gaps))
    assert not stale, f"KNOWN_GAPS lists what is no longer missing: {stale}"


def test_the_comparison_sees_a_missing_parameter_and_default(official_api: dict) -> None:
    """Guards the walker: a dropped parameter, a changed default and a dropped **kwargs are all gaps."""
    doctored = {
        "sam2.utils.amg": {"is_box_near_crop_edge": official_api["sam2.utils.amg"]["is_box_near_crop_edge"]}
    }
    signature = doctored["sam2.utils.amg"]["is_box_near_crop_edge"]["signature"]
    signature.append(["extra_flag", "KEYWORD_ONLY", "bool:True"])
    for param in signature:
        if param[0] == "atol":
            param[2] = "float:21.0"
    assert set(api_gaps(doctored)) == {
        "sam2.utils.amg.is_box_near_crop_edge(extra_flag): missing",
        "sam2.utils.amg.is_box_near_crop_edge(atol): default float:20.0, officially float:21.0",
    }
    predictor = {"sam2.sam2_image_predictor": official_api["sam2.sam2_image_predictor"]}
    init = predictor["sam2.sam2_image_predictor"]["SAM2ImagePredictor"]["members"]["__init__"][1]
    assert ["kwargs", "VAR_KEYWORD", None] in init
    assert api_gaps(predictor) == []


# ---- exception types ---------------------------------------------------------------------------------

# The same failing calls, run against the official package (in the oracle subprocess) and ours. `inputs`
# holds a folder with two frames, an empty folder and a checkpoint that fits no model.
_FAILING_CALLS = r"""
import numpy as np
import torch
from sam2.build_sam import build_sam2, build_sam2_hf, build_sam2_video_predictor
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.utils.misc import load_video_frames

torch.manual_seed(0)
small = ["++model.image_size=256"]
image_model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=small)
video_model = build_sam2_video_predictor(
    "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=small
)
state = video_model.init_state(inputs["frames"])
calls = {
    "predict before set_image": lambda: SAM2ImagePredictor(image_model).predict(),
    "get_image_embedding before set_image": lambda: SAM2ImagePredictor(image_model).get_image_embedding(),
    "propagate_in_video without prompts": lambda: next(iter(video_model.propagate_in_video(state))),
    "remove_object(strict=True) of an unknown id": lambda: video_model.remove_object(state, 42, strict=True),
    "load_video_frames of an empty folder": lambda: load_video_frames(inputs["empty"], 256, True),
    "build_sam2 with a checkpoint that does not fit": lambda: build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml", inputs["bad_ckpt"], device="cpu"
    ),
    "build_sam2 with a missing checkpoint": lambda: build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml", inputs["missing_ckpt"], device="cpu"
    ),
    "build_sam2_hf of an unknown id": lambda: build_sam2_hf("facebook/sam3-hiera-huge"),
    "generator with neither points_per_side nor point_grids": lambda: SAM2AutomaticMaskGenerator(
        image_model, points_per_side=None
    ),
    "generator with an unknown output_mode": lambda: SAM2AutomaticMaskGenerator(image_model, output_mode="png"),
}
raised = {}
for name, call in calls.items():
    try:
        call()
        raised[name] = None
    except Exception as err:  # the point: which type each call raises
        raised[name] = err
outputs["raised"] = {name: None if err is None else type(err).__name__ for name, err in raised.items()}
if inputs.get("keep_errors"):
    outputs["errors"] = raised
"""

# Where we raise another type than the official package, on purpose.
EXCEPTION_DEVIATIONS = {
    "generator with neither points_per_side nor point_grids": (
        "ValueError naming both settings; the official check is an assert, which `python -O` removes"
    ),
    "generator with an unknown output_mode": "ValueError listing the modes; officially an assert, as above",
}


def test_failing_calls_raise_the_official_exception_types(tmp_path) -> None:
    from PIL import Image

    require_oracle()
    frames = tmp_path / "frames"
    frames.mkdir()
    for idx in range(2):
        Image.fromarray(np.full((32, 48, 3), 60 * idx, np.uint8)).save(frames / f"{idx:05d}.jpg")
    (tmp_path / "empty").mkdir()
    torch.save({"model": {"not_a_parameter": torch.zeros(1)}}, tmp_path / "bad.pt")
    inputs = {
        "frames": str(frames),
        "empty": str(tmp_path / "empty"),
        "bad_ckpt": str(tmp_path / "bad.pt"),
        "missing_ckpt": str(tmp_path / "missing.pt"),
    }
    official = run_oracle(_FAILING_CALLS, inputs)["raised"]
    ours: dict[str, Any] = {}
    exec(_FAILING_CALLS, {"inputs": {**inputs, "keep_errors": True}, "outputs": ours})
    mismatched = []
    for name, official_type in official.items():
        assert official_type is not None, f"{name}: the official package raised nothing; fix the case"
        error = ours["errors"][name]
        official_classes = [cls for cls in type(error).__mro__ if cls.__name__ == official_type]
        if not official_classes and name not in EXCEPTION_DEVIATIONS:
            mismatched.append(f"{name}: ours {type(error).__name__}, officially {official_type}")
        elif official_classes and name in EXCEPTION_DEVIATIONS:
            mismatched.append(f"{name}: listed as a deviation but raises the official {official_type}")
    assert not mismatched, "\n".join(mismatched)
    assert set(official) == set(ours["errors"])
