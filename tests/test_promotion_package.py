"""The promotion package's promises to what lies outside it: versions registered before the move still
load, and the rule can be read without MLflow."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

LEGACY_MODEL = Path(__file__).parent / "data" / "mlflow_model_sam2_mlflow_model_path"
MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def test_a_version_logged_with_the_old_class_path_still_loads_and_predicts(tmp_path):
    import mlflow.pyfunc
    import torch

    from sam2.build_sam import build_sam2
    from sam2.promotion.pyfunc_model import SAM2VideoModel

    assert b"sam2.mlflow_model" in (LEGACY_MODEL / "python_model.pkl").read_bytes()
    folder = tmp_path / "model"
    shutil.copytree(LEGACY_MODEL, folder)
    torch.manual_seed(0)
    checkpoint = tmp_path / "checkpoint.pt"
    model = build_sam2(MODEL_CONFIG, None, device="cpu", hydra_overrides_extra=["++model.image_size=128"])
    torch.save({"model": model.state_dict()}, checkpoint)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["config"]["checkpoint_uri"] = str(checkpoint)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    loaded = mlflow.pyfunc.load_model(str(folder))
    assert type(loaded.unwrap_python_model()) is SAM2VideoModel
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(2):
        rgb = np.full((64, 64, 3), 30, np.uint8)
        rgb[20:40, 10 + 4 * t : 30 + 4 * t] = 220
        Image.fromarray(rgb).save(frames / f"{t:05d}.jpg")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    out = loaded.predict({"video": str(frames), "mask": mask})
    assert out["object_ids"] == [1] and out["masks"].shape == (2, 64, 64)


def test_the_promotion_rule_loads_without_mlflow():
    code = (
        "import sys; import sam2.promotion.rules, sam2.promotion.comparison, sam2.contracts; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_promote_step_keeps_the_inference_overrides_for_the_pyfunc_model():
    from sam2.promotion.promote_step import hydra_overrides_of, regression_scores

    args = "--device cpu --hydra_overrides ++model.image_size=128 ++model.fill_hole_area=0"
    assert hydra_overrides_of(args) == ["++model.image_size=128", "++model.fill_hole_area=0"]
    assert hydra_overrides_of("--device cpu") == []
    found = {"dataset_uri": "s3://d/reg", "videos": ["a", "b"], "new_score": 50.0, "baseline_score": 49.0}
    assert regression_scores(found, "s3://d/reg").videos == ("a", "b")
    assert regression_scores(found, "") is None and regression_scores(None, "s3://d/reg") is None
