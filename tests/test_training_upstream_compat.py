"""Upstream training configs and checkpoints: every key of upstream's trainer accepted with upstream's
meaning (or refused naming the key), upstream's checkpoint format resumed, non-finite gradients skipped.

Upstream's trainer arguments and sub-config keys are those of training/trainer.py in the sam2==1.1.0
wheel (Trainer.__init__, CheckpointConf, LoggingConf, DistributedConf, CudaConf).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hydra.utils import instantiate
from sam2_oracle import require_oracle, run_oracle
from training_loop_support import NUM_FRAMES, TRAIN_CONFIG, make_clips, training_overrides

from sam2.training.train import compose_training_config
from sam2.training.trainer import epoch_checkpoint_name

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path, log_name: str, extra: list[str], num_epochs: int = 1, videos=None):
    data = tmp_path / "data"
    if (data / "JPEGImages").is_dir():
        img, gt = data / "JPEGImages", data / "Annotations"
    else:
        img, gt = make_clips(data, videos or {"clip": NUM_FRAMES})
    cfg = compose_training_config(
        TRAIN_CONFIG,
        training_overrides(img, gt, tmp_path / log_name, num_epochs=num_epochs, extra=extra),
    )
    return instantiate(cfg.trainer, _recursive_=False)


def test_upstream_trainer_arguments_and_checkpoint_keys_are_accepted(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM2_TRAINER_TEST_VAR", raising=False)
    trainer = _trainer(
        tmp_path,
        "run",
        [
            "+trainer.cuda.cudnn_benchmark=false",
            "+trainer.cuda.allow_tf32=true",
            "+trainer.env_variables.SAM2_TRAINER_TEST_VAR=set-by-config",
            "+trainer.optim_overrides=null",
            "+trainer.meters=null",
            "+trainer.checkpoint.save_list=[1]",
            "+trainer.checkpoint.save_best_meters=null",
            "+trainer.checkpoint.skip_saving_parameters=[]",
            "+trainer.checkpoint.initialize_after_preemption=null",
            "+trainer.logging.log_level_primary=WARNING",
            "+trainer.logging.log_level_secondary=ERROR",
            "+trainer.logging.log_scalar_frequency=100",
            "+trainer.logging.log_visual_frequency=100",
            "+trainer.logging.scalar_keys_to_log=null",
            "+trainer.logging.log_batch_stats=false",
            "+trainer.distributed.comms_dtype=null",
        ],
        num_epochs=2,
    )
    import os

    assert os.environ["SAM2_TRAINER_TEST_VAR"] == "set-by-config"  # set before anything else, as upstream
    trainer.run()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    # save_list [1]: the checkpoint after the first epoch is kept too (save_freq 0 keeps none)
    assert saved == ["checkpoint.pt", "checkpoint_1.pt"]
    # log_level_primary=WARNING: rank 0's log file holds no INFO lines (e.g. "saved checkpoint")
    assert "saved checkpoint" not in (tmp_path / "run" / "logs" / "log_rank0.txt").read_text()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.checkpoint.keep_every=3", r"trainer.checkpoint has unknown key\(s\) \['keep_every'\]"),
        ("+trainer.logging.log_every=3", r"trainer.logging has unknown key\(s\) \['log_every'\]"),
        ("+trainer.cuda.tf32=true", r"trainer.cuda has unknown key\(s\) \['tf32'\]"),
        ("+trainer.meters.val.iou._target_=x.Meter", r"trainer.meters: upstream's meter classes"),
        ("+trainer.checkpoint.save_best_meters=[val]", r"trainer.checkpoint.save_best_meters names meters"),
        (
            "+trainer.checkpoint.skip_saving_parameters=[image_encoder.*]",
            r"skip_saving_parameters matches trainable parameters",
        ),
    ],
)
def test_keys_without_a_meaning_here_are_refused_by_name(tmp_path, override, message):
    # Hydra wraps the constructor's ValueError; its message is kept.
    with pytest.raises(Exception, match=message):
        _trainer(tmp_path, "run", [override])


def test_skip_saving_parameters_leaves_frozen_weights_out_and_resumes(tmp_path):
    extra = [
        "model.freeze_image_encoder=true",
        "+trainer.checkpoint.skip_saving_parameters=[image_encoder.*]",
    ]
    trainer = _trainer(tmp_path, "run", extra)
    trainer.run()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint.pt", weights_only=True)["model"]
    assert saved and not [k for k in saved if k.startswith("image_encoder.")]
    # Resuming re-runs the initializer (initialize_after_preemption defaults to true with skipped
    # parameters), then loads the checkpoint without the skipped keys.
    resumed = _trainer(tmp_path, "run", extra)
    assert resumed.epoch == 1
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def _as_upstream_checkpoint(ours: dict) -> dict:
    """Our checkpoint in the layout upstream's Trainer.save_checkpoint writes."""
    return {
        "model": ours["model"],
        "optimizer": ours["optimizer"],
        "epoch": ours["epoch"],
        "loss": OrderedDict(),  # the loss module's state dict: empty for MultiStepMultiMasksAndIous
        "steps": {"train": ours["steps"], "val": 0},
        "time_elapsed": 12.5,
        "best_meter_values": {},
    }


def test_checkpoint_in_upstreams_format_resumes(tmp_path):
    """An upstream-format checkpoint (steps as {"train", "val"}, loss-module state, time_elapsed,
    best_meter_values) resumes model, optimizer, epoch and steps: the run then ends bit-identical to an
    uninterrupted one."""
    extra = ["trainer.checkpoint.save_freq=1", "scratch.base_lr=1e-4"]
    full = _trainer(tmp_path, "full", extra, num_epochs=2, videos={"a": 5, "b": 4})
    full.run()
    first = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint_1.pt", weights_only=True)
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    torch.save(_as_upstream_checkpoint(first), resumed_dir / "checkpoint.pt")

    resumed = _trainer(tmp_path, "resumed", extra, num_epochs=2, videos={"a": 5, "b": 4})
    assert (resumed.epoch, resumed.steps) == (1, first["steps"]) and first["steps"] > 0
    resumed.run()
    end = torch.load(tmp_path / "full" / "checkpoints" / "checkpoint.pt", weights_only=True)
    again = torch.load(resumed_dir / "checkpoint.pt", weights_only=True)
    assert (again["epoch"], again["steps"]) == (end["epoch"], end["steps"])
    for name, value in end["model"].items():
        assert torch.equal(value, again["model"][name]), name
    for idx, state in end["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, again["optimizer"]["state"][idx][key]), (idx, key)


def test_step_with_non_finite_gradients_is_skipped_and_counted(tmp_path):
    """As upstream's GradScaler does: the optimizer step is skipped (weights and optimizer state as
    before), training goes on, and the log counts the skipped steps."""
    trainer = _trainer(tmp_path, "run", ["dataset.multiplier=3"])
    target = trainer.model.sam_mask_decoder.iou_token.weight
    calls = {"n": 0}

    def poison_first_backward(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 1 else grad

    target.register_hook(poison_first_backward)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    assert trainer.skipped_steps == 1 and calls["n"] == 3 and trainer.steps == 3
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the two good steps trained
    log = (tmp_path / "run" / "logs" / "log_rank0.txt").read_text()
    assert "step 1 skipped: non-finite gradients (1 step(s) skipped so far)" in log
    # The skipped step moved nothing: no AdamW step count goes past the two good steps.
    state = trainer.optim.optimizer.state
    assert max(int(s["step"]) for s in state.values()) == 2 and int(state[target]["step"]) == 2


# A small model both packages build the same way (the official configs state widths without `scratch`).
SMALL_TRUNK = [
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.stages=[1,1,1,1]",
    "model.image_encoder.trunk.global_att_blocks=[2]",
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.trunk.window_spec=[4,4,2,2]",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.memory_attention.num_layers=1",
    "model.image_size=64",
]

# Upstream's optimizer from the wheel's own recipe (its trainer.optim block) over the official model,
# one AdamW step with a seeded random gradient per parameter, saved as upstream's trainer saves it.
# fvcore (the recipe's schedulers) is no dependency here; the two schedulers are stood in by their
# definitions (constant; cosine from start to end value), which only set each group's lr/weight decay.
_UPSTREAM_CHECKPOINT = """
import math, types
from omegaconf import OmegaConf


class ConstantParamScheduler:
    def __init__(self, value):
        self.value = value

    def __call__(self, where):
        return self.value


class CosineParamScheduler:
    def __init__(self, start_value, end_value):
        self.start_value, self.end_value = start_value, end_value

    def __call__(self, where):
        return self.end_value + 0.5 * (self.start_value - self.end_value) * (1 + math.cos(math.pi * where))


for name in ("fvcore", "fvcore.common", "fvcore.common.param_scheduler"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["fvcore.common.param_scheduler"].ConstantParamScheduler = ConstantParamScheduler
sys.modules["fvcore.common.param_scheduler"].CosineParamScheduler = CosineParamScheduler
OmegaConf.register_new_resolver("divide", lambda a, b: a / b)
OmegaConf.register_new_resolver("times", lambda a, b: a * b)
from sam2.build_sam import build_sam2
from training.optimizer import construct_optimizer

torch.manual_seed(0)
model = build_sam2(inputs["config"], None, device="cpu", hydra_overrides_extra=inputs["overrides"])
recipe = OmegaConf.load(inputs["recipe"])
optim = recipe.trainer.optim
opt = construct_optimizer(model, optim.optimizer, optim.options, optim.param_group_modifiers)
gen = torch.Generator().manual_seed(0)
for _, p in model.named_parameters():
    p.grad = torch.randn(p.shape, generator=gen)
opt.step(where=0.0, step=0)
state = opt.optimizer.state
outputs["by_name"] = {
    n: (float(state[p]["exp_avg"].double().sum()), float(state[p]["exp_avg_sq"].double().sum()))
    for n, p in model.named_parameters()
}
outputs["num_groups"] = len(opt.optimizer.param_groups)
torch.save(
    {
        "model": model.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "epoch": 1,
        "loss": {},
        "steps": {"train": 1, "val": 0},
        "time_elapsed": 3.0,
        "best_meter_values": {},
    },
    inputs["out"],
)
"""


def test_checkpoint_of_upstreams_trainer_resumes_its_optimizer_state(tmp_path):
    """A checkpoint.pt as upstream's trainer writes it, optimizer state in upstream's param-group layout
    (its own construct_optimizer over the same recipe block): our trainer resumes model, epoch, steps and
    every parameter's AdamW moments."""
    from sam2_oracle import require_oracle, run_oracle

    oracle = require_oracle()
    save_dir = tmp_path / "run" / "checkpoints"
    save_dir.mkdir(parents=True)
    official = run_oracle(
        _UPSTREAM_CHECKPOINT,
        {
            "config": "configs/sam2.1/sam2.1_hiera_t.yaml",
            "overrides": [f"++{o}" for o in SMALL_TRUNK],
            "recipe": str(oracle / "sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"),
            "out": str(save_dir / "checkpoint.pt"),
        },
    )
    img, gt = make_clips(tmp_path / "data", {"clip": NUM_FRAMES})
    overrides = [
        o
        for o in training_overrides(img, gt, tmp_path / "run", num_epochs=2)
        if not o.startswith(("scratch.d_model", "scratch.mem_dim", "+model.memory_encoder", "model."))
    ]
    cfg = compose_training_config(TRAIN_CONFIG, [*overrides, *SMALL_TRUNK[:-1]])
    trainer = instantiate(cfg.trainer, _recursive_=False)
    assert (trainer.epoch, trainer.steps) == (1, 1)
    groups = trainer.optim.optimizer.param_groups
    assert len(groups) != official["num_groups"]  # the layouts differ: a positional load would misplace
    state = trainer.optim.optimizer.state
    for name, param in trainer.model.named_parameters():
        exp_avg, exp_avg_sq = official["by_name"][name]
        assert float(state[param]["exp_avg"].double().sum()) == pytest.approx(exp_avg, rel=1e-6, abs=1e-9), (
            name
        )
        assert float(state[param]["exp_avg_sq"].double().sum()) == pytest.approx(exp_avg_sq, rel=1e-6), name


# Upstream's own epoch loop and checkpoint writer (Trainer.run_train and Trainer.save_checkpoint of
# training/trainer.py in the sam2==1.1.0 wheel) on a stand-in trainer whose epochs train and validate
# nothing: which files each (max_epochs, save_freq, save_list) leaves, and the "epoch" stored in each.
_UPSTREAM_EPOCH_CHECKPOINTS = """
import os, tempfile, types
shim = types.ModuleType("tensordict")
shim.tensorclass = lambda cls: cls  # imported by training.utils.data_utils; not used here
sys.modules["tensordict"] = shim
from training.trainer import CheckpointConf, Trainer


class EmptyEpochs(Trainer):
    def __init__(self, root, max_epochs, save_freq, save_list):
        self.epoch, self.max_epochs, self.val_epoch_freq = 0, max_epochs, 1
        self.checkpoint_conf = CheckpointConf(
            save_dir=os.path.join(root, "checkpoints"), save_freq=save_freq, save_list=save_list
        ).infer_missing()
        self.logging_conf = types.SimpleNamespace(log_dir=root)
        self.distributed_rank = 0
        self.model = torch.nn.Linear(1, 1)
        self.optim = types.SimpleNamespace(optimizer=torch.optim.SGD(self.model.parameters(), lr=0.1))
        self.optim_conf = types.SimpleNamespace(amp=types.SimpleNamespace(enabled=False))
        self.loss = torch.nn.Module()
        self.steps = {"train": 0, "val": 0}
        self.time_elapsed_meter = types.SimpleNamespace(val=0.0)
        self.best_meter_values, self.where = {}, 0.0
        self.train_dataset = types.SimpleNamespace(get_loader=lambda epoch: [])
        self.logger = types.SimpleNamespace(log_dict=lambda *args, **kwargs: None)

    def train_epoch(self, loader):
        self.steps["train"] += 1
        return {}

    def run_val(self):
        pass


for case in inputs["cases"]:
    max_epochs, save_freq, save_list = case
    with tempfile.TemporaryDirectory() as root:
        EmptyEpochs(root, max_epochs, save_freq, list(save_list)).run_train()
        folder = os.path.join(root, "checkpoints")
        outputs[case] = {
            name: torch.load(os.path.join(folder, name), weights_only=False)["epoch"]
            for name in sorted(os.listdir(folder))
        }
"""

# (max_epochs, save_freq, save_list): neither, each alone, both overlapping, entries outside the run.
_CASES = [
    (3, 0, ()),
    (4, 1, ()),
    (7, 3, ()),
    (5, 0, (1, 4)),
    (6, 2, (1, 2, 5)),
    (3, 0, (0, 3, 9)),
    (3, 2, (1,)),
]


@pytest.fixture(scope="module")
def upstream_epoch_checkpoints() -> dict[tuple, dict[str, int]]:
    require_oracle()
    return run_oracle(_UPSTREAM_EPOCH_CHECKPOINTS, {"cases": _CASES}, timeout=300)


@pytest.mark.parametrize(
    "case", _CASES, ids=lambda c: f"epochs{c[0]}-freq{c[1]}-list{'_'.join(map(str, c[2]))}"
)
def test_epoch_checkpoints_are_the_ones_upstreams_trainer_keeps(upstream_epoch_checkpoints, case):
    """checkpoint_<k>.pt is named by epochs done (k = 1 after the first) and kept when save_freq divides
    k or save_list holds k, as upstream's trainer decides; checkpoint.pt is always the newest."""
    max_epochs, save_freq, save_list = case
    upstream = upstream_epoch_checkpoints[case]
    ours = {"checkpoint.pt": max_epochs}
    for done in range(1, max_epochs + 1):
        name = epoch_checkpoint_name(done, save_freq, save_list)
        if name is not None:
            ours[name] = done
    assert ours == upstream


def test_training_run_writes_upstreams_epoch_checkpoints_and_resumes_from_them(
    tmp_path, upstream_epoch_checkpoints
):
    """A real 3-epoch run with save_freq 2 and save_list [1]: the same files as upstream's trainer, each
    holding upstream's "epoch"; resuming from checkpoint_1.pt starts at the second epoch."""
    case = (3, 2, (1,))
    extra = ["trainer.checkpoint.save_freq=2", "+trainer.checkpoint.save_list=[1]"]
    _trainer(tmp_path, "run", extra, num_epochs=case[0]).run()
    folder = tmp_path / "run" / "checkpoints"
    written = {p.name: torch.load(p, weights_only=True)["epoch"] for p in sorted(folder.glob("*.pt"))}
    assert written == upstream_epoch_checkpoints[case]

    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    (resumed_dir / "checkpoint.pt").write_bytes((folder / "checkpoint_1.pt").read_bytes())
    resumed = _trainer(tmp_path, "resumed", extra, num_epochs=case[0])
    assert resumed.epoch == 1  # epochs done: the next one trained is the second, as upstream's run_train
