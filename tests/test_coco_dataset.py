"""COCO image data: a file with polygons, RLE and crowd annotations made here, through extraction,
validation (named errors), the split, the raw data set, and a few CPU training steps of Hiera-tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam2.data.coco import CocoFormatError, load_coco
from sam2.training.dataset.coco_raw_dataset import COCORawDataset
from sam2.training.dataset.errors import DatasetError

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 48, 64
IMAGE_CONFIG = "configs/sam2.1_training/sam2.1_hiera_t_image_finetune.yaml"


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_coco_export(folder: Path, num_images: int = 6) -> Path:
    """A Roboflow-style export: images beside `_annotations.coco.json`. Per image: a rectangle polygon,
    a two-part polygon, a disc as compressed RLE, a disc as uncompressed RLE on even images, and a crowd
    region (RLE) on image 0."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    ann_id = 100
    for i in range(num_images):
        name = f"img_{i:02d}.jpg"
        pixels = (rng.random((H, W, 3)) * 60).astype(np.uint8)
        pixels[10 + i : 30 + i, 8:28] = (220, 40, 40)
        pixels[_disc(30, 46, 8)] = (40, 200, 60)
        Image.fromarray(pixels).save(folder / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        objects = [
            {"segmentation": [_rect(8, 10 + i, 28, 30 + i)], "iscrowd": 0},
            {"segmentation": [_rect(34, 2, 44, 8), _rect(50, 2, 60, 8)], "iscrowd": 0},
            {"segmentation": _rle(_disc(30, 46, 8)), "iscrowd": 0},
        ]
        if i % 2 == 0:
            objects.append({"segmentation": _rle(_disc(38, 12, 5), compressed=False), "iscrowd": 0})
        if i == 0:
            crowd = np.zeros((H, W), bool)
            crowd[40:46, 30:60] = True
            objects.append({"segmentation": _rle(crowd, compressed=False), "iscrowd": 1})
        for obj in objects:
            annotations.append(
                {"id": ann_id, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 1, 1], **obj}
            )
            ann_id += 1
    path = folder / "_annotations.coco.json"
    categories = [{"id": 1, "name": "thing"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def export(tmp_path) -> Path:
    return make_coco_export(tmp_path / "export" / "train")


@pytest.fixture
def prepared(tmp_path, export) -> Path:
    from sam2.data.frame_extraction import extract_dataset

    out = tmp_path / "data"
    result = extract_dataset(export.parent.parent, out, workers=1)
    assert result.num_videos == 6 and len(result.version) == 16
    return out


def test_extraction_lays_out_images_file_and_manifest(prepared, export):
    assert sorted(p.name for p in (prepared / "images").iterdir()) == [f"img_{i:02d}.jpg" for i in range(6)]
    assert json.loads((prepared / "annotations.coco.json").read_text()) == json.loads(export.read_text())
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["format"] == "sam2-coco-1" and manifest["num_images"] == 6
    assert manifest["missing_images"] == []
    from sam2.data.frame_extraction import extract_dataset

    again = extract_dataset(export.parent.parent, prepared.parent / "again", workers=1)
    assert again.version == manifest["version"], "the same export must give the same data set version"


def test_polygons_rle_and_crowd_become_the_right_objects(prepared):
    ds = COCORawDataset(str(prepared / "images"), str(prepared / "annotations.coco.json"))
    assert ds.video_names[0] == "img_00.jpg" and len(ds) == 6
    video, loader = ds.get_video(0)
    assert video.video_id == 1 and len(video.frames) == 1
    segments = loader.load(0)
    assert sorted(segments.keys()) == [100, 101, 102, 103], "the crowd annotation (104) is skipped"
    rect = segments[100].numpy()
    expected = np.zeros((H, W), bool)
    expected[10:30, 8:28] = True
    iou = (rect & expected).sum() / (rect | expected).sum()
    assert rect.shape == (H, W) and iou > 0.9, iou
    two_parts = segments[101].numpy()
    assert two_parts[3:7, 36:42].all() and two_parts[3:7, 52:58].all() and not two_parts[3:7, 46:48].any()
    assert np.array_equal(segments[102].numpy(), _disc(30, 46, 8))
    assert np.array_equal(segments[103].numpy(), _disc(38, 12, 5))

    as_objects = COCORawDataset(
        str(prepared / "images"), str(prepared / "annotations.coco.json"), crowd="object"
    )
    assert 104 in as_objects.get_video(0)[1].load(0)

    masked = COCORawDataset(
        str(prepared / "images"), str(prepared / "annotations.coco.json"), crowd="mask_out"
    )
    video, loader = masked.get_video(0)
    data = video.frames[0].data
    assert data is not None and data.shape == (3, H, W)
    assert torch.allclose(data[:, 42, 40], torch.tensor([0.485, 0.456, 0.406]))
    assert 104 not in loader.load(0)
    assert masked.get_video(1)[0].frames[0].data is None, "an image without crowd is read from its file"

    capped = COCORawDataset(
        str(prepared / "images"),
        str(prepared / "annotations.coco.json"),
        max_objects_per_image=2,
        num_frames=3,
    )
    video, loader = capped.get_video(0)
    assert sorted(loader.load(0).keys()) == [100, 102], "the two largest objects are kept"
    assert len(video.frames) == 3 and capped.video_length(0) == 3


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_structural_errors_name_file_image_and_annotation(tmp_path):
    good_image = {"id": 1, "file_name": "a.jpg", "width": W, "height": H}
    cases = {
        "unknown image": (
            {"images": [good_image], "annotations": [{"id": 7, "image_id": 99, "segmentation": []}]},
            ["image id 99", "annotation id 7", "does not list"],
        ),
        "duplicate annotation": (
            {
                "images": [good_image],
                "annotations": [{"id": 7, "image_id": 1}, {"id": 7, "image_id": 1}],
            },
            ["image id 1", "annotation id 7", "duplicate annotation id"],
        ),
        "no size": (
            {"images": [{"id": 3, "file_name": "b.jpg"}], "annotations": []},
            ["image id 3", "'width'"],
        ),
        "escaping path": (
            {"images": [{"id": 4, "file_name": "../x.jpg", "width": 2, "height": 2}], "annotations": []},
            ["image id 4", "relative path"],
        ),
        "not coco": ({"videos": []}, ["no 'images' list"]),
    }
    for label, (data, fragments) in cases.items():
        path = _write(tmp_path / f"{label.replace(' ', '_')}.json", data)
        with pytest.raises(CocoFormatError) as info:
            load_coco(path)
        message = str(info.value)
        assert str(path) in message, (label, message)
        for fragment in fragments:
            assert fragment in message, (label, message)


def test_validation_names_bad_images_and_annotations_and_excludes_them(prepared, capsys):
    from sam2.tools.validate_dataset import main as validate_main

    ann = prepared / "annotations.coco.json"
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 900, "image_id": 2, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0})
    data["annotations"].append(
        {"id": 901, "image_id": 3, "segmentation": {"size": [10, 10], "counts": [100]}, "iscrowd": 0}
    )
    data["images"].append({"id": 50, "file_name": "gone.jpg", "width": W, "height": H})
    data["images"].append({"id": 51, "file_name": "crowd_only.jpg", "width": W, "height": H})
    Image.new("RGB", (W, H)).save(prepared / "images" / "crowd_only.jpg")
    crowd = _rle(_disc(20, 20, 6))
    data["annotations"].append({"id": 902, "image_id": 51, "segmentation": crowd, "iscrowd": 1})
    data["images"].append({"id": 52, "file_name": "wrong_size.jpg", "width": W, "height": H})
    Image.new("RGB", (W + 1, H)).save(prepared / "images" / "wrong_size.jpg")
    data["annotations"].append({"id": 903, "image_id": 52, "segmentation": [_rect(1, 1, 9, 9)], "iscrowd": 0})
    ann.write_text(json.dumps(data))

    assert validate_main(["--root", str(prepared), "--on_bad", "exclude"]) == 0
    out = capsys.readouterr().out
    from sam2.data.validation import default_report_dir

    report_dir = default_report_dir(prepared)  # beside the data set, not inside it
    report = json.loads((report_dir / "validation_report.json").read_text())
    bad = report["bad"]
    assert set(bad) == {"img_01.jpg", "img_02.jpg", "gone.jpg", "crowd_only.jpg", "wrong_size.jpg"}
    assert (
        "image id 2, annotation id 900" in bad["img_01.jpg"][0]
        and "at least 3 points" in bad["img_01.jpg"][0]
    )
    assert str(ann) in bad["img_01.jpg"][0]
    assert "annotation id 901" in bad["img_02.jpg"][0] and "[10, 10]" in bad["img_02.jpg"][0]
    assert "image id 50" in bad["gone.jpg"][0] and "does not exist" in bad["gone.jpg"][0]
    assert "no non-crowd annotation" in bad["crowd_only.jpg"][0]
    assert "65x48" in bad["wrong_size.jpg"][0]
    assert "BAD  img_01.jpg" in out
    valid = (report_dir / "valid_videos.txt").read_text().split()
    assert valid == ["img_00.jpg", "img_03.jpg", "img_04.jpg", "img_05.jpg"]

    assert validate_main(["--root", str(prepared), "--on_bad", "fail"]) == 2

    # Training without validation names the same annotation instead of failing in a loader worker.
    with pytest.raises(DatasetError, match="image id 2, annotation id 900"):
        COCORawDataset(str(prepared / "images"), str(ann))


def test_split_lists_image_file_names_deterministically(prepared):
    from sam2.data.splitting import split_dataset

    first = split_dataset(prepared, prepared / "lists", val_fraction=0.34, seed=3, stratify=True)
    again = split_dataset(
        prepared / "annotations.coco.json", prepared / "lists2", val_fraction=0.34, seed=3, stratify=True
    )
    assert (first.train, first.val) == (again.train, again.val)
    assert len(first.val) == 2 and not set(first.train) & set(first.val)
    assert sorted(first.train + first.val) == [f"img_{i:02d}.jpg" for i in range(6)]
    ds = COCORawDataset(
        str(prepared / "images"), str(prepared / "annotations.coco.json"), file_list_txt=str(first.val_file)
    )
    assert ds.video_names == first.val


def test_image_recipe_trains_hiera_tiny_on_cpu(prepared, tmp_path):
    """A few CPU steps of the image recipe (Hiera-tiny, 128 px), then a box-prompted validation."""
    from sam2.data.splitting import split_dataset
    from sam2.training.train import main

    lists = split_dataset(prepared, prepared, val_fraction=0.34, seed=0)
    log_dir = tmp_path / "run"
    rc = main(
        [
            "-c",
            IMAGE_CONFIG,
            "--use-cluster",
            "0",
            "--num-gpus",
            "1",
            f"dataset.img_folder={prepared / 'images'}",
            f"dataset.ann_file={prepared / 'annotations.coco.json'}",
            f"dataset.file_list_txt={lists.train_file}",
            f"dataset.val_file_list_txt={lists.val_file}",
            "dataset.crowd=mask_out",
            "scratch.resolution=128",
            "scratch.max_num_objects=3",
            "scratch.num_epochs=1",
            "scratch.train_batch_size=2",
            "scratch.num_train_workers=0",
            "model.num_correction_pt_per_frame=2",
            "trainer.mode=train",
            "trainer.accelerator=cpu",
            "trainer.logging.log_freq=1",
            "trainer.data.train.pin_memory=false",
            "trainer.data.val.pin_memory=false",
            f"launcher.experiment_log_dir={log_dir}",
            "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path=null",
        ]
    )
    assert rc == 0
    checkpoint = torch.load(log_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert checkpoint["steps"] == 2 and checkpoint["epoch"] == 1
    log = (log_dir / "logs" / "log_rank0.txt").read_text()
    assert "COCORawDataset: 4 videos" in log and "validation after epoch 1" in log
    # Validation scores every non-crowd object of the val images (3, plus the uncompressed RLE on even ones).
    val_objects = sum(3 + (int(name[4:6]) % 2 == 0) for name in lists.val)
    assert f"({val_objects} objects" in log


@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
def test_image_recipes_compose_with_the_upstream_keys(size):
    from sam2.training.train import compose_training_config

    cfg = compose_training_config(
        f"configs/sam2.1_training/sam2.1_hiera_{size}_image_finetune.yaml",
        ["dataset.img_folder=/d/images", "dataset.ann_file=/d/annotations.coco.json"],
    )
    assert cfg.scratch.num_frames == 1
    train = cfg.trainer.data.train.datasets[0].dataset.datasets[0]
    assert train.video_dataset._target_.endswith("coco_raw_dataset.COCORawDataset")
    assert train.video_dataset.ann_file == "/d/annotations.coco.json" and train.sampler.num_frames == 1
    assert cfg.trainer.data.val.datasets[0].video_dataset.ann_file == "/d/annotations.coco.json"
    assert cfg.trainer.lora.rank == 0 and cfg.trainer.model.image_encoder.trunk.embed_dim > 0
    name = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}[size]
    initializer = cfg.trainer.checkpoint.model_weight_initializer.state_dict
    assert initializer.checkpoint_path == f"./checkpoints/sam2.1_hiera_{name}.pt"


def test_extraction_takes_the_coco_file_itself_and_an_annotations_folder_layout(tmp_path, export):
    from sam2.data.frame_extraction import extract_dataset
    from sam2.tools.extract_frames import main as extract_main

    assert extract_main(["--input", str(export), "--output", str(tmp_path / "from_file")]) == 0
    assert (tmp_path / "from_file" / "images" / "img_05.jpg").is_file()

    # COCO's own layout (CVAT too): annotations/instances_default.json beside the images folder.
    cvat = tmp_path / "cvat"
    (cvat / "annotations").mkdir(parents=True)
    export.rename(cvat / "annotations" / "instances_default.json")
    export.parent.rename(cvat / "images")
    result = extract_dataset(cvat, tmp_path / "from_cvat", workers=1)
    assert result.num_videos == 6
    assert (tmp_path / "from_cvat" / "images" / "img_00.jpg").is_file()

    # Images nowhere to be found: one error naming the file and the image.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "instances.json").write_text((cvat / "annotations" / "instances_default.json").read_text())
    with pytest.raises(CocoFormatError, match=r"instances\.json, image id \d+: image file 'img_\d+\.jpg'"):
        extract_dataset(lonely, tmp_path / "from_lonely", workers=1)
