"""Raw data sets, samplers, VOSDataset and the collated batch, on synthetic DAVIS / SA-V / SA-1B data."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from training_data_synth import label_map, make_davis, make_sa1b, make_sav

from sam2.training.dataset import transforms as T
from sam2.training.dataset.errors import DatasetError, SamplingError
from sam2.training.dataset.vos_dataset import VOSDataset
from sam2.training.dataset.vos_raw_dataset import PNGRawDataset, SA1BRawDataset, SAVRawDataset
from sam2.training.dataset.vos_sampler import EvalSampler, RandomUniformSampler
from sam2.training.utils.data_utils import BatchedVideoDatapoint, collate_fn

SIZE = (48, 64)  # H, W of the synthetic frames
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def plain_transforms() -> list:
    return [T.ComposeAPI([T.ToTensorAPI(), T.NormalizeAPI(mean=MEAN, std=STD)])]


def training_transforms(resolution: int) -> list:
    """The MOSE fine-tuning recipe's transform list, at a small resolution."""
    return [
        T.ComposeAPI(
            [
                T.RandomHorizontalFlip(consistent_transform=True),
                T.RandomAffine(
                    degrees=25, shear=20, image_interpolation="bilinear", consistent_transform=True
                ),
                T.RandomResizeAPI(sizes=resolution, square=True, consistent_transform=True),
                T.ColorJitter(
                    consistent_transform=True, brightness=0.1, contrast=0.03, saturation=0.03, hue=None
                ),
                T.RandomGrayscale(p=0.05, consistent_transform=True),
                T.ColorJitter(
                    consistent_transform=False, brightness=0.1, contrast=0.05, saturation=0.05, hue=None
                ),
                T.ToTensorAPI(),
                T.NormalizeAPI(mean=MEAN, std=STD),
            ]
        )
    ]


@pytest.fixture
def davis(tmp_path):
    return make_davis(tmp_path, {"bear": 6, "cows": 5, "dog": 7}, num_objects=3, size=SIZE)


def test_collated_batch_has_documented_shapes_and_dtypes(davis):
    img_root, gt_root = davis
    raw = PNGRawDataset(str(img_root), str(gt_root))
    dataset = VOSDataset(
        training_transforms(64),
        True,
        raw,
        RandomUniformSampler(num_frames=3, max_num_objects=2),
        multiplier=2,
    )
    random.seed(0)
    batch = collate_fn([dataset[0], dataset[2]], dict_key="all")

    assert isinstance(batch, BatchedVideoDatapoint)
    num_objects = batch.masks.shape[1]
    assert num_objects == 4  # 2 sampled objects in each of 2 clips
    assert batch.img_batch.shape == (3, 2, 3, 64, 64) and batch.img_batch.dtype == torch.float32
    assert batch.masks.shape == (3, num_objects, 64, 64) and batch.masks.dtype == torch.bool
    assert batch.obj_to_frame_idx.shape == (3, num_objects, 2) and batch.obj_to_frame_idx.dtype == torch.int32
    assert batch.metadata.unique_objects_identifier.shape == (3, num_objects, 3)
    assert batch.metadata.frame_orig_size.shape == (3, num_objects, 2)
    assert (batch.metadata.frame_orig_size == torch.tensor(SIZE)).all()
    assert batch.num_frames == 3 and batch.num_videos == 2 and batch.batch_size == torch.Size([3])
    assert batch.dict_key == "all"
    # (t, b) of each object: t is the step, b the clip the object belongs to
    assert (batch.obj_to_frame_idx[..., 0] == torch.arange(3)[:, None]).all()
    assert batch.obj_to_frame_idx[0, :, 1].tolist() == [0, 0, 1, 1]
    # flat layout: all frames of video 0, then video 1
    assert batch.flat_img_batch.shape == (6, 3, 64, 64)
    flat = batch.flat_img_batch[batch.flat_obj_to_img_idx[2, 3]]
    assert torch.equal(flat, batch.img_batch[2, 1])
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, BatchedVideoDatapoint) and torch.equal(moved.masks, batch.masks)
    assert repeat_factor(dataset) == 2.0


def repeat_factor(dataset: VOSDataset) -> float:
    return float(dataset.repeat_factors.unique().item())


def test_masks_and_identifiers_match_the_annotations(davis):
    img_root, gt_root = davis
    raw = PNGRawDataset(str(img_root), str(gt_root), file_list_txt=None)
    dataset = VOSDataset(plain_transforms(), False, raw, EvalSampler(), multiplier=1)
    datapoint = dataset[raw.video_names.index("cows")]
    batch = collate_fn([datapoint], dict_key="val")

    assert batch.num_frames == 5
    ids = batch.metadata.unique_objects_identifier
    assert ids[:, :, 0].unique().tolist() == [raw.video_names.index("cows")]
    assert ids[0, :, 1].tolist() == [1, 2, 3]  # palette indices are the object ids
    assert ids[:, 0, 2].tolist() == [0, 1, 2, 3, 4]  # frame ids, in order
    for t in range(5):
        labels = torch.from_numpy(label_map(*SIZE, t, 3))
        for o, obj_id in enumerate([1, 2, 3]):
            assert torch.equal(batch.masks[t, o], labels == obj_id)
    # the frames are the JPEGs, normalised
    expected_red = (230 / 255 - MEAN[0]) / STD[0]
    red = batch.img_batch[0, 0, 0]
    assert abs(red[batch.masks[0, 0]].median().item() - expected_red) < 0.35  # JPEG blurs colour edges
    assert red[~batch.masks[0].any(0)].median().item() < -1.5  # dark background


def test_random_uniform_sampler_invariants(tmp_path):
    # object 3 only appears from frame 4 on
    img_root, gt_root = make_davis(tmp_path, {"v": 10}, num_objects=3, size=SIZE, appear={3: 4})
    raw = PNGRawDataset(str(img_root), str(gt_root))
    video, loader = raw.get_video(0)
    random.seed(1)
    for reverse_prob, directions in ((0.0, {1}), (1.0, {-1}), (0.5, {1, -1})):
        sampler = RandomUniformSampler(num_frames=4, max_num_objects=2, reverse_time_prob=reverse_prob)
        seen_directions, seen_objects = set(), set()
        for _ in range(60):
            sample = sampler.sample(video, loader)
            ids = [f.frame_idx for f in sample.frames]
            assert len(ids) == 4
            steps = {b - a for a, b in zip(ids, ids[1:], strict=False)}
            assert len(steps) == 1 and steps <= {1, -1}  # consecutive frames, one direction
            seen_directions |= steps
            assert 1 <= len(sample.object_ids) <= 2 and len(set(sample.object_ids)) == len(sample.object_ids)
            first = label_map(*SIZE, ids[0], 3, {3: 4})
            assert all((first == k).any() for k in sample.object_ids)  # visible in the first frame
            seen_objects |= set(sample.object_ids)
        assert seen_directions == directions
        assert seen_objects == {1, 2, 3}


def test_max_num_objects_caps_and_samples_all(davis):
    img_root, gt_root = davis
    raw = PNGRawDataset(str(img_root), str(gt_root))
    video, loader = raw.get_video(0)
    assert len(RandomUniformSampler(2, max_num_objects=1).sample(video, loader).object_ids) == 1
    assert sorted(RandomUniformSampler(2, max_num_objects=10).sample(video, loader).object_ids) == [1, 2, 3]


def test_short_clip_is_reported_with_video_and_both_numbers(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"long": 8, "tiny": 2}, size=SIZE)
    raw = PNGRawDataset(str(img_root), str(gt_root))
    with pytest.raises(DatasetError) as err:
        VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(num_frames=3, max_num_objects=2), 1)
    message = str(err.value)
    assert "'tiny'" in message and "2" in message and "num_frames=3" in message
    assert "excluded_videos_list_txt" in message and "scratch.num_frames" in message
    assert "'long'" not in message

    excluded = tmp_path / "excluded.txt"
    excluded.write_text("tiny\n")
    raw = PNGRawDataset(str(img_root), str(gt_root), excluded_videos_list_txt=str(excluded))
    assert raw.video_names == ["long"]
    VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(num_frames=3, max_num_objects=2), 1)


def test_sample_rate_and_truncate_shorten_the_listed_frames(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"v": 9}, size=SIZE)
    raw = PNGRawDataset(str(img_root), str(gt_root), sample_rate=2, truncate_video=7)
    video, _ = raw.get_video(0)
    assert [f.frame_idx for f in video.frames] == [0, 2, 4, 6]
    assert raw.video_length(0) == 4


def test_non_jpg_frames_are_rejected_by_name(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"good": 4, "pngs": 4}, size=SIZE)
    for jpg in (img_root / "pngs").iterdir():
        jpg.rename(jpg.with_suffix(".png"))
    with pytest.raises(DatasetError, match=r"video 'pngs'.*not \.jpg.*'00000\.png'"):
        PNGRawDataset(str(img_root), str(gt_root))


def test_missing_annotation_names_the_frame_unless_targets_are_unavailable(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"v": 4}, size=SIZE)
    (gt_root / "v" / "00002.png").unlink()
    raw = PNGRawDataset(str(img_root), str(gt_root))
    dataset = VOSDataset(plain_transforms(), False, raw, EvalSampler(), 1)
    with pytest.raises(DatasetError, match=r"no mask for frame 2 .*00002\.png"):
        dataset[0]
    # a val split annotated on its first frame only
    dataset = VOSDataset(plain_transforms(), False, raw, EvalSampler(), 1, target_segments_available=False)
    batch = collate_fn([dataset[0]], "val")
    assert batch.masks[0].any() and not batch.masks[1:].any()


def test_missing_annotation_folder_and_file_list(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"a": 3, "b": 3}, size=SIZE)
    file_list = tmp_path / "train.txt"
    file_list.write_text("b\n\n")
    assert PNGRawDataset(str(img_root), str(gt_root), file_list_txt=str(file_list)).video_names == ["b"]
    for png in (gt_root / "a").iterdir():
        png.unlink()
    (gt_root / "a").rmdir()
    with pytest.raises(DatasetError, match=r"video 'a': no annotation folder"):
        PNGRawDataset(str(img_root), str(gt_root))


def test_one_folder_per_object_layout(tmp_path):
    img_root, palette_root = make_davis(tmp_path, {"v": 4}, num_objects=2, size=SIZE)
    gt_root = tmp_path / "PerObject"
    from PIL import Image

    for k in (1, 2):
        (gt_root / "v" / f"{k - 1:03d}").mkdir(parents=True)
        for t in range(4):
            if k == 2 and t == 3:
                continue  # object absent on the last frame: no PNG
            Image.fromarray((label_map(*SIZE, t, 2) == k).astype(np.uint8) * 255).save(
                gt_root / "v" / f"{k - 1:03d}" / f"{t:05d}.png"
            )
    raw = PNGRawDataset(str(img_root), str(gt_root), is_palette=False)
    dataset = VOSDataset(plain_transforms(), False, raw, EvalSampler(), 1)
    batch = collate_fn([dataset[0]], "val")
    assert batch.metadata.unique_objects_identifier[0, :, 1].tolist() == [1, 2]
    assert torch.equal(batch.masks[1, 1], torch.from_numpy(label_map(*SIZE, 1, 2) == 2))
    assert not batch.masks[3, 1].any()


def test_sav_json_masklets_sampled_on_annotated_frames(tmp_path):
    img_root, gt_root = make_sav(tmp_path, {"sav_000001": 12, "sav_000002": 9}, ann_every=3)
    raw = SAVRawDataset(str(img_root), str(gt_root), ann_every=3)
    assert raw.video_names == ["sav_000001", "sav_000002"]
    video, loader = raw.get_video(0)
    assert [f.frame_idx for f in video.frames] == [0, 3, 6, 9]
    dataset = VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(3, max_num_objects=2), 1)
    random.seed(3)
    batch = collate_fn([dataset[0], dataset[1]], "sav")
    ids = batch.metadata.unique_objects_identifier
    for t in range(3):
        for o in range(ids.shape[1]):
            frame_id, obj_index = int(ids[t, o, 2]), int(ids[t, o, 1])
            assert frame_id % 3 == 0
            expected = label_map(*SIZE, frame_id, 2) == obj_index + 1  # masklet index 0 is object 1
            assert torch.equal(batch.masks[t, o], torch.from_numpy(expected))

    # a clip shorter than num_frames is only known once the JSON is read: still a clear error
    dataset = VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(4, max_num_objects=2), 1)
    with pytest.raises(DatasetError, match=r"video 'sav_000002' has 3 usable frame\(s\).*num_frames=4"):
        dataset[1]


def test_sa1b_images_become_one_frame_clips(tmp_path):
    img_root, gt_root = make_sa1b(tmp_path, ["sa_17", "sa_42"])
    raw = SA1BRawDataset(str(img_root), str(gt_root), mask_area_frac_thresh=0.9)
    assert raw.video_names == ["sa_17", "sa_42"]
    dataset = VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(1, max_num_objects=8), 1)
    batch = collate_fn([dataset[1]], "sa1b")
    assert batch.img_batch.shape == (1, 1, 3, *SIZE)
    assert batch.masks.shape[1] == 3  # the whole-image mask is filtered out by area
    assert batch.metadata.unique_objects_identifier[0, :, 0].unique().tolist() == [42]
    union = batch.masks[0].any(0)
    assert torch.equal(union, torch.from_numpy(label_map(*SIZE, 0, 3) > 0))
    # without the area filter, the whole-image mask is an object too
    raw = SA1BRawDataset(str(img_root), str(gt_root))
    dataset = VOSDataset(plain_transforms(), True, raw, RandomUniformSampler(1, max_num_objects=8), 1)
    assert collate_fn([dataset[0]], "sa1b").masks.shape[1] == 4


def test_video_without_visible_objects_is_replaced_in_training_only(tmp_path):
    img_root, gt_root = make_davis(tmp_path, {"empty": 4, "full": 4}, size=SIZE)
    for png in (gt_root / "empty").iterdir():
        from PIL import Image

        Image.new("P", SIZE[::-1]).save(png)
    raw = PNGRawDataset(str(img_root), str(gt_root))
    sampler = RandomUniformSampler(num_frames=2, max_num_objects=2)
    random.seed(0)
    datapoint = VOSDataset(plain_transforms(), True, raw, sampler, 1)[0]
    assert datapoint.video_id == raw.video_names.index("full")
    with pytest.raises(SamplingError, match="'empty'"):
        VOSDataset(plain_transforms(), False, raw, sampler, 1)[0]


BIG_FRAME = 256  # side of the frames of the vanishing-object data: 4x the 64 px training resolution


def make_videos_with_a_one_pixel_object(root, videos: dict[str, bool], num_frames: int = 4):
    """{video: with_big_object}: object 2 is one pixel at BIG_FRAME x BIG_FRAME (gone after a resize to
    64 px); object 1, when present, a large rectangle that survives any of the recipe's transforms."""
    from training_data_synth import render, write_palette_png

    img_root, gt_root = root / "JPEGImages", root / "Annotations"
    for video, with_big in videos.items():
        (img_root / video).mkdir(parents=True)
        (gt_root / video).mkdir(parents=True)
        for t in range(num_frames):
            labels = np.zeros((BIG_FRAME, BIG_FRAME), np.uint8)
            if with_big:
                labels[64 + t : 192 + t, 64:192] = 1
            labels[30, 200 + t] = 2
            render(labels).save(img_root / video / f"{t:05d}.jpg", quality=95)
            write_palette_png(labels, gt_root / video / f"{t:05d}.png")
    return img_root, gt_root


def resize_to_64() -> list:
    return [
        T.ComposeAPI(
            [
                T.RandomResizeAPI(sizes=64, square=True, consistent_transform=True),
                T.ToTensorAPI(),
                T.NormalizeAPI(mean=MEAN, std=STD),
            ]
        )
    ]


@pytest.fixture
def fresh_vanish_warning(monkeypatch):
    """The vanished-object warning is shown once per process: make this test's the first."""
    from sam2.training.dataset import vos_dataset

    monkeypatch.setattr(vos_dataset, "_warned_vanished", False, raising=False)


def test_object_emptied_by_the_resize_is_dropped_in_training(tmp_path, caplog, fresh_vanish_warning):
    img_root, gt_root = make_videos_with_a_one_pixel_object(tmp_path, {"kite": True})
    raw = PNGRawDataset(str(img_root), str(gt_root))
    sampler = RandomUniformSampler(num_frames=3, max_num_objects=2)
    video, loader = raw.get_video(0)
    assert sorted(sampler.sample(video, loader).object_ids) == [1, 2]  # both visible before transforms

    caplog.set_level(logging.DEBUG, logger="sam2.training.dataset.vos_dataset")
    random.seed(0)
    # Upstream's default keeps the emptied object (with its empty first-frame mask).
    kept = VOSDataset(resize_to_64(), True, raw, sampler, 1)[0]
    first = {obj.object_id: obj for obj in kept.frames[0].objects}
    assert sorted(first) == [1, 2] and not first[2].segment.any() and first[1].segment.any()
    random.seed(0)
    dataset = VOSDataset(resize_to_64(), True, raw, sampler, 1, drop_objects_emptied_on_first_frame=True)
    datapoints = [dataset[0] for _ in range(3)]
    for datapoint in datapoints:
        assert [[obj.object_id for obj in frame.objects] for frame in datapoint.frames] == [[1]] * 3
    batch = collate_fn(datapoints, "all")
    assert batch.masks.shape[1] == 3 and batch.masks[0].flatten(1).any(1).all()
    dropped = [r for r in caplog.records if "object 2 vanished from the clip's first frame" in r.message]
    assert len(dropped) == 3 and all("video 'kite'" in r.message for r in dropped)
    assert all("frame id" in r.message for r in dropped)
    assert [r.levelno for r in dropped] == [logging.WARNING, logging.DEBUG, logging.DEBUG]

    # Evaluation scores the val set as listed: the emptied object stays, with its empty masks.
    datapoint = VOSDataset(resize_to_64(), False, raw, EvalSampler(), 1)[0]
    assert [obj.object_id for obj in datapoint.frames[0].objects] == [1, 2]
    assert not datapoint.frames[0].objects[1].segment.any()


def test_clip_whose_every_object_vanishes_is_replaced_by_another_video(tmp_path, caplog):
    img_root, gt_root = make_videos_with_a_one_pixel_object(tmp_path, {"dust": False, "kite": True})
    raw = PNGRawDataset(str(img_root), str(gt_root))
    sampler = RandomUniformSampler(num_frames=3, max_num_objects=2)
    dataset = VOSDataset(resize_to_64(), True, raw, sampler, 1, drop_objects_emptied_on_first_frame=True)
    caplog.set_level(logging.DEBUG, logger="sam2.training.dataset.vos_dataset")
    random.seed(0)
    datapoint = dataset[raw.video_names.index("dust")]
    assert datapoint.video_id == raw.video_names.index("kite")
    assert any("video 'dust': every sampled object vanished" in r.message for r in caplog.records)

    (tmp_path / "dust.txt").write_text("dust\n")
    only_dust = PNGRawDataset(str(img_root), str(gt_root), file_list_txt=str(tmp_path / "dust.txt"))
    dataset = VOSDataset(
        resize_to_64(),
        True,
        only_dust,
        RandomUniformSampler(3, max_num_objects=2),
        1,
        drop_objects_emptied_on_first_frame=True,
    )
    with pytest.raises(SamplingError, match=r"before and after the transforms .*'dust'"):
        dataset[0]


def test_training_with_clicks_goes_on_past_objects_emptied_by_the_resize(tmp_path, fresh_vanish_warning):
    """Every batch click-prompted and every clip holding a 1-pixel object that the resize to 64 px
    empties: SAM2Train raised "empty ground-truth mask" on the first batch and the run stopped. Now, as
    upstream, the emptied object stays and gets a background click."""
    from training_loop_support import NO_DROPOUT_OVERRIDES, TRAIN_CONFIG, training_overrides

    from sam2.training.train import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two intra-op threads on a shared 2-core box are slower than one
    try:
        img, gt = make_videos_with_a_one_pixel_object(tmp_path / "data", {"kite": True, "ball": True})
        log_dir = tmp_path / "run"
        extra = ["model.prob_to_use_pt_input_for_train=1.0", "dataset.multiplier=2", *NO_DROPOUT_OVERRIDES]
        overrides = training_overrides(img, gt, log_dir, extra=extra)
        assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    assert torch.load(log_dir / "checkpoints" / "checkpoint.pt", weights_only=True)["steps"] == 4
    log_text = (log_dir / "logs" / "log_rank0.txt").read_text()
    assert "vanished" not in log_text  # kept, not dropped (drop_objects_emptied_on_first_frame is off)


@pytest.mark.gpu
def test_batch_pins_memory_and_moves_to_the_gpu(davis):
    img_root, gt_root = davis
    raw = PNGRawDataset(str(img_root), str(gt_root))
    dataset = VOSDataset(plain_transforms(), False, raw, RandomUniformSampler(3, max_num_objects=2), 1)
    batch = collate_fn([dataset[0], dataset[1]], "all").pin_memory()
    assert batch.img_batch.is_pinned() and batch.masks.is_pinned()
    assert batch.metadata.unique_objects_identifier.is_pinned()
    on_gpu = batch.to("cuda", non_blocking=True)
    assert on_gpu.img_batch.is_cuda and on_gpu.metadata.frame_orig_size.is_cuda
    assert torch.equal(on_gpu.masks.cpu(), batch.masks)
