"""The data part of a training config builds through Hydra `_target_`s, as the training recipes write it."""

from __future__ import annotations

import random

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from training_data_synth import make_davis, make_sa1b

from sam2.training.utils.data_utils import BatchedVideoDatapoint

DATA_CONFIG = """
scratch:
  resolution: 64
  train_batch_size: 2
  num_train_workers: 1
  num_frames: 3
  max_num_objects: 2
  phases_per_epoch: 1
dataset:
  img_folder: null
  gt_folder: null
  file_list_txt: null
  multiplier: 2
vos:
  train_transforms:
    - _target_: sam2.training.dataset.transforms.ComposeAPI
      transforms:
        - _target_: sam2.training.dataset.transforms.RandomHorizontalFlip
          consistent_transform: true
        - _target_: sam2.training.dataset.transforms.RandomAffine
          degrees: 25
          shear: 20
          image_interpolation: bilinear
          consistent_transform: true
        - _target_: sam2.training.dataset.transforms.RandomResizeAPI
          sizes: ${scratch.resolution}
          square: true
          consistent_transform: true
        - _target_: sam2.training.dataset.transforms.ColorJitter
          consistent_transform: true
          brightness: 0.1
          contrast: 0.03
          saturation: 0.03
          hue: null
        - _target_: sam2.training.dataset.transforms.RandomGrayscale
          p: 0.05
          consistent_transform: true
        - _target_: sam2.training.dataset.transforms.ColorJitter
          consistent_transform: false
          brightness: 0.1
          contrast: 0.05
          saturation: 0.05
          hue: null
        - _target_: sam2.training.dataset.transforms.RandomMosaicVideoAPI
          prob: 0.15
        - _target_: sam2.training.dataset.transforms.ToTensorAPI
        - _target_: sam2.training.dataset.transforms.NormalizeAPI
          mean: [0.485, 0.456, 0.406]
          std: [0.229, 0.224, 0.225]
data:
  train:
    _target_: sam2.training.dataset.sam2_datasets.TorchTrainMixedDataset
    phases_per_epoch: ${scratch.phases_per_epoch}
    batch_sizes: [ "${scratch.train_batch_size}", 1 ]
    dataset_prob: [0.5, 0.5]
    datasets:
      - _target_: sam2.training.dataset.utils.RepeatFactorWrapper
        dataset:
          _target_: sam2.training.dataset.utils.ConcatDataset
          datasets:
            - _target_: sam2.training.dataset.vos_dataset.VOSDataset
              transforms: ${vos.train_transforms}
              training: true
              video_dataset:
                _target_: sam2.training.dataset.vos_raw_dataset.PNGRawDataset
                img_folder: ${dataset.img_folder}
                gt_folder: ${dataset.gt_folder}
                file_list_txt: ${dataset.file_list_txt}
              sampler:
                _target_: sam2.training.dataset.vos_sampler.RandomUniformSampler
                num_frames: ${scratch.num_frames}
                max_num_objects: ${scratch.max_num_objects}
                reverse_time_prob: 0.5
              multiplier: ${dataset.multiplier}
      - _target_: sam2.training.dataset.vos_dataset.VOSDataset
        transforms: ${vos.train_transforms}
        training: true
        video_dataset:
          _target_: sam2.training.dataset.vos_raw_dataset.SA1BRawDataset
          img_folder: ${sa1b.img_folder}
          gt_folder: ${sa1b.gt_folder}
          num_frames: ${scratch.num_frames}
        sampler:
          _target_: sam2.training.dataset.vos_sampler.RandomUniformSampler
          num_frames: ${scratch.num_frames}
          max_num_objects: ${scratch.max_num_objects}
        multiplier: 1
    shuffle: true
    num_workers: ${scratch.num_train_workers}
    pin_memory: false
    drop_last: true
    collate_fn:
      _target_: sam2.training.utils.data_utils.collate_fn
      _partial_: true
      dict_key: all
"""


def test_upstream_style_data_config_instantiates_and_yields_batches(tmp_path):
    img_root, gt_root = make_davis(tmp_path / "mose", {"a": 5, "b": 4, "c": 6}, num_objects=3)
    sa1b_img, sa1b_gt = make_sa1b(tmp_path / "sa1b", ["sa_1", "sa_2", "sa_3"])
    file_list = tmp_path / "train.txt"
    file_list.write_text("a\nb\nc\n")
    cfg = OmegaConf.create(DATA_CONFIG)
    cfg.dataset.img_folder, cfg.dataset.gt_folder = str(img_root), str(gt_root)
    cfg.dataset.file_list_txt = str(file_list)
    cfg.sa1b = {"img_folder": str(sa1b_img), "gt_folder": str(sa1b_gt)}

    random.seed(0)
    torch.manual_seed(0)
    mixed = instantiate(cfg.data.train, _recursive_=True)
    loader = mixed.get_loader(epoch=0)
    batches = list(loader)
    # 3 videos x multiplier 2 = 6 clips -> 3 batches of 2; 3 images -> 3 batches of 1
    assert len(batches) == len(loader) == 6
    assert {b.num_videos for b in batches} == {1, 2}
    for batch in batches:
        assert isinstance(batch, BatchedVideoDatapoint) and batch.dict_key == "all"
        assert batch.img_batch.shape[0] == 3 and batch.img_batch.shape[2:] == (3, 64, 64)
        assert batch.masks.shape[0] == 3 and batch.masks.shape[2:] == (64, 64)
        assert 1 <= batch.masks.shape[1] <= 2 * batch.num_videos
        assert batch.masks[0].flatten(1).any(1).all()  # every tracked object is visible on the first frame
