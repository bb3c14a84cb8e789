"""The training loop: epochs of SAM2Train steps with DDP, AMP, clipping, accumulation, checkpoints, J&F val.

Constructed from the `trainer:` block of a training config (`hydra.utils.instantiate(cfg.trainer,
_recursive_=False)`); the sub-blocks (model, data, optim, loss, logging, checkpoint) stay configs and are
built here, so the model exists before the optimizer that needs its parameters.

Reproducibility: every epoch starts by reseeding the RNGs from (seed_value, epoch, rank) and the model's
prompt generator from (seed_value, epoch); checkpoints are written at epoch ends and, with
`checkpoint.save_every_n_steps`, every N optimizer steps (where every rank reseeds again, and a resumed run
skips the batches already trained on), so a run resumed from any checkpoint replays exactly what an
uninterrupted run does. Rank 0 alone decides what to resume from (only it writes checkpoints); every
other rank resumes from that same state (see `Trainer._resume`), whatever its own disk holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sam2.training.lora import (
    LoRASettings,
    adapter_state_dict,
    add_lora_adapters,
    base_weights_checksum,
    check_same_base,
    load_adapter_state_dict,
    merged_state_dict,
)
from sam2.training.loss_fns import CORE_LOSS_KEY
from sam2.training.optimizer import (
    GradientClipper,
    build_optimizer_from_config,
    optimizer_state_from_upstream,
    upstream_param_groups,
)
from sam2.training.utils.checkpoint_utils import local_copy, read_checkpoint_file, save_checkpoint_atomic
from sam2.training.utils.distributed import (
    DistributedContext,
    all_ranks_true,
    barrier,
    broadcast_object,
    setup_distributed,
)
from sam2.training.utils.logging_utils import add_rank_log_file

logger = logging.getLogger(__name__)

MODES = ("train", "train_only", "val")
# The keys of upstream's trainer sub-configs (training/trainer.py: CheckpointConf, LoggingConf,
# DistributedConf, CudaConf); anything else is a ValueError naming it.
CHECKPOINT_KEYS = {
    "save_dir",
    "save_freq",
    "save_list",
    "model_weight_initializer",
    "save_best_meters",
    "skip_saving_parameters",
    "initialize_after_preemption",
    "resume_from",
    "save_every_n_steps",  # ours: mid-epoch checkpoints
}
LOGGING_KEYS = {
    "log_dir",
    "log_freq",
    "tensorboard_writer",
    "log_level_primary",
    "log_level_secondary",
    "log_scalar_frequency",
    "log_visual_frequency",
    "scalar_keys_to_log",
    "log_batch_stats",
}
DISTRIBUTED_KEYS = {"backend", "comms_dtype", "find_unused_parameters", "timeout_mins"}
CUDA_KEYS = {"cudnn_deterministic", "cudnn_benchmark", "allow_tf32", "matmul_allow_tf32", "cudnn_allow_tf32"}
CHECKPOINT_NAME = "checkpoint.pt"
BEST_CHECKPOINT_NAME = "checkpoint_best.pt"
# LoRA runs: the final adapters folded into the base, a plain checkpoint build_sam2 loads strictly.
MERGED_CHECKPOINT_NAME = "checkpoint_merged.pt"


def epoch_checkpoint_name(epochs_done: int, save_freq: int, save_list: Iterable[int]) -> str | None:
    """The file that also keeps the state after `epochs_done` epochs (1 after the first), or None.

    Upstream's rule (training/trainer.py, Trainer.save_checkpoint, called with epoch + 1 by run_train):
    checkpoint_<epochs done>.pt when save_freq > 0 divides that number or save_list holds it. The state
    inside records the same number as its "epoch", the epoch a resumed run starts at.
    """
    kept = (save_freq > 0 and epochs_done % save_freq == 0) or epochs_done in set(save_list)
    return f"checkpoint_{epochs_done}.pt" if kept else None


def _check_keys(block: str, conf: Mapping | None, known: set[str]) -> None:
    unknown = sorted(set(conf or {}) - known)
    if unknown:
        raise ValueError(
            f"trainer.{block} has unknown key(s) {unknown}; the keys upstream's trainer reads are "
            f"{sorted(known)}"
        )


def _steps_of(state: Mapping[str, Any]) -> int:
    """Optimizer steps done: an int in our checkpoints, {"train": n, "val": m} in upstream's."""
    steps = state.get("steps", 0)
    return int(steps.get("train", 0)) if isinstance(steps, Mapping) else int(steps)


def _apply_cuda_settings(cuda: Mapping | None) -> None:
    """Upstream's `trainer.cuda` block (cuDNN determinism/benchmark, TF32), applied where CUDA exists."""
    conf = {"cudnn_deterministic": False, "cudnn_benchmark": True, "allow_tf32": False, **(cuda or {})}
    if not torch.cuda.is_available():
        return
    torch.backends.cudnn.deterministic = bool(conf["cudnn_deterministic"])
    torch.backends.cudnn.benchmark = bool(conf["cudnn_benchmark"])
    matmul, cudnn = conf.get("matmul_allow_tf32"), conf.get("cudnn_allow_tf32")
    torch.backends.cuda.matmul.allow_tf32 = bool(conf["allow_tf32"] if matmul is None else matmul)
    torch.backends.cudnn.allow_tf32 = bool(conf["allow_tf32"] if cudnn is None else cudnn)


def _grads_finite(model: nn.Module) -> bool:
    flags = [torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True  # one device sync, not one per tensor


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without writing a checkpoint of that state."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a training checkpoint stands: what every rank must agree on to resume together.

    model_checksum: the float64 sum of every model tensor, so two checkpoints of the same epoch and step
    but of different runs still tell apart.
    """

    source: str
    epoch: int
    steps: int
    batches_done_in_epoch: int
    model_checksum: float

    @classmethod
    def of(cls, source: str | os.PathLike, state: Mapping[str, Any]) -> ResumePoint:
        checksum = sum(float(t.detach().double().sum()) for t in state["model"].values())
        return cls(
            source=str(source),
            epoch=int(state.get("epoch", 0)),
            steps=_steps_of(state),
            batches_done_in_epoch=int(state.get("batches_done_in_epoch", 0)),
            model_checksum=checksum,
        )

    def same_state(self, other: ResumePoint) -> bool:
        return dataclasses.replace(self, source=other.source) == other

    def describe(self) -> str:
        return (
            f"{self.source} (epoch {self.epoch}, step {self.steps}, {self.batches_done_in_epoch} batches "
            "of the epoch done)"
        )


def _as_container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains (and validates) SAM2Train as the config describes; `run()` does the work.

    mode: "train" (train, validate every `val_epoch_freq` epochs and keep the best checkpoint by J&F),
        "train_only", or "val" (validate the current checkpoint once).
    val_epoch_freq: epochs between validations in mode "train" (>= 1; the last epoch is always validated);
        "never" is mode "train_only". Raises ValueError naming the key for 0 or less.
    accelerator: "cuda" (bf16 autocast when optim.amp.enabled, nccl) or "cpu" (fp32, gloo).
    Upstream's other arguments mean what they mean there: env_variables (set before anything else),
    cuda (cuDNN / TF32 switches), optim_overrides (read by nothing, as upstream), meters (must be empty:
    upstream's meter classes are not part of this package; mode "train" scores J&F itself). The checkpoint
    block takes save_list (epoch counts that also keep checkpoint_<N>.pt), skip_saving_parameters (name
    patterns left out of saved checkpoints; they must be frozen) and initialize_after_preemption (rerun
    the weight initializer before resuming; default: whether skip_saving_parameters is set).
    The logging block takes upstream's log_level_primary / log_level_secondary (the rank log file's level
    on rank 0 / other ranks, where given); log_scalar_frequency, log_visual_frequency, scalar_keys_to_log
    and log_batch_stats are accepted and read by nothing (TensorBoard scalars follow log_freq).
    A step whose gradients are not finite is skipped and counted (as upstream's GradScaler does).
    lora: the `trainer.lora` block (sam2.training.lora.LoRASettings); rank > 0 trains LoRA adapters on
        the frozen initial weights: checkpoints then hold the adapters alone, and the end of training
        also writes MERGED_CHECKPOINT_NAME (adapters merged into a plain checkpoint).

    Setup runs as named steps (`_setup_*`, `_construct_optimizers`), each building one concern, in the
    order of upstream's trainer where upstream has the step.
    """

    def __init__(
        self,
        *,
        data: DictConfig,
        model: DictConfig,
        logging: DictConfig,
        checkpoint: DictConfig,
        max_epochs: int,
        mode: str = "train",
        accelerator: str = "cuda",
        seed_value: int = 123,
        val_epoch_freq: int = 1,
        distributed: DictConfig | None = None,
        optim: DictConfig | None = None,
        loss: DictConfig | None = None,
        lora: DictConfig | None = None,
        cuda: DictConfig | None = None,
        env_variables: DictConfig | None = None,
        optim_overrides: Any = None,
        meters: DictConfig | None = None,
    ) -> None:
        # The steps run in this order: the RNG draws of model construction, data sets and resumption
        # follow it, and a resumed run replays an uninterrupted one only if they stay where they are.
        self._setup_env_variables(env_variables)
        self._check_upstream_blocks(checkpoint, logging, distributed, cuda, meters, optim_overrides)
        self._setup_schedule(mode, max_epochs, seed_value, val_epoch_freq)
        self._setup_log_file(logging)
        self._setup_torch_dist_and_backend(accelerator, cuda, distributed)
        self._setup_tensorboard(logging)
        self._setup_checkpointing(checkpoint)
        self._setup_components(model, lora)
        self._setup_dataloaders(data)
        self._setup_loss(loss)
        self._construct_optimizers(optim)
        self._setup_training_state()
        self._setup_ddp_distributed_training(distributed or {})

    # ------------------------------------------------------------------------------------------------------
    # Setup, in the order __init__ runs it
    # ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _setup_env_variables(env_variables: Mapping | None) -> None:
        """Upstream's `trainer.env_variables`, set first: later setup may read them."""
        for name, value in (env_variables or {}).items():
            os.environ[str(name)] = str(value)

    @staticmethod
    def _check_upstream_blocks(
        checkpoint: Mapping,
        logging_conf: Mapping,
        distributed: Mapping | None,
        cuda: Mapping | None,
        meters: Mapping | None,
        optim_overrides: Any,
    ) -> None:
        """Upstream's sub-blocks hold only the keys upstream reads; those that mean nothing here are
        refused (meters) or named in a warning (optim_overrides)."""
        _check_keys("checkpoint", checkpoint, CHECKPOINT_KEYS)
        _check_keys("logging", logging_conf, LOGGING_KEYS)
        _check_keys("distributed", distributed, DISTRIBUTED_KEYS)
        _check_keys("cuda", cuda, CUDA_KEYS)
        if meters:
            raise ValueError(
                "trainer.meters: upstream's meter classes are not part of this package; leave it empty "
                "(trainer.mode=train scores validation J&F itself and keeps checkpoint_best.pt)"
            )
        if checkpoint.get("save_best_meters"):
            raise ValueError(
                "trainer.checkpoint.save_best_meters names meters, and this trainer has none; "
                "trainer.mode=train keeps the best validation J&F as checkpoint_best.pt"
            )
        if optim_overrides:
            logger.warning("trainer.optim_overrides is set; upstream's trainer reads nothing from it either")

    def _setup_schedule(self, mode: str, max_epochs: int, seed_value: int, val_epoch_freq: int) -> None:
        """What to run, for how many epochs, validating how often, from which seed."""
        if mode not in MODES:
            raise ValueError(f"trainer.mode must be one of {MODES}, got {mode!r}")
        if max_epochs < 1:
            raise ValueError(f"trainer.max_epochs must be >= 1, got {max_epochs}")
        if int(val_epoch_freq) < 1:
            raise ValueError(
                f"trainer.val_epoch_freq (scratch.val_epoch_freq in the recipes) must be >= 1, got "
                f"{val_epoch_freq}: it is the number of epochs between validations (the last epoch is "
                "always validated); to train without validating, set trainer.mode=train_only"
            )
        self.mode = mode
        self.max_epochs = int(max_epochs)
        self.seed_value = int(seed_value)
        self.val_epoch_freq = int(val_epoch_freq)

    def _setup_log_file(self, logging_conf: Mapping) -> None:
        """This rank's log file, before the process group, so that joining it is recorded too; upstream's
        log levels where given (log_level_primary on rank 0, log_level_secondary elsewhere)."""
        self._log_handler = add_rank_log_file(logging_conf.log_dir, int(os.environ.get("RANK", "0")))
        level = logging_conf.get(
            "log_level_primary" if os.environ.get("RANK", "0") == "0" else "log_level_secondary"
        )
        if level:
            self._log_handler.setLevel(str(level).upper())

    def _setup_torch_dist_and_backend(
        self, accelerator: str, cuda: Mapping | None, distributed: Mapping | None
    ) -> None:
        """cuDNN / TF32 switches, the process group (nccl on CUDA, gloo on the CPU) and this rank's device."""
        _apply_cuda_settings(cuda)
        dist_conf = distributed or {}
        self.ctx: DistributedContext = setup_distributed(
            accelerator,
            backend=dist_conf.get("backend"),
            timeout_mins=dist_conf.get("timeout_mins", 30),
        )
        self.device = self.ctx.device

    def _setup_tensorboard(self, logging_conf: Mapping) -> None:
        """Step logging every log_freq optimizer steps; the TensorBoard writer on rank 0 only."""
        self.log_freq = int(logging_conf.get("log_freq", 10))
        tb_conf = logging_conf.get("tensorboard_writer")
        self.tb_writer = None
        if tb_conf is not None and self.ctx.is_main:
            self.tb_writer = instantiate(tb_conf)

    def _setup_checkpointing(self, checkpoint: DictConfig) -> None:
        """Where checkpoints go, which epochs keep their own file, what they leave out."""
        self.checkpoint_conf = checkpoint
        self.save_dir = Path(checkpoint.save_dir)
        self.save_freq = int(checkpoint.get("save_freq", 0) or 0)
        self.save_every_n_steps = int(checkpoint.get("save_every_n_steps", 0) or 0)
        self.save_list = {int(e) for e in checkpoint.get("save_list") or []}
        self.skip_saving_parameters = list(checkpoint.get("skip_saving_parameters") or [])
        after_preemption = checkpoint.get("initialize_after_preemption")
        self.initialize_after_preemption = (
            bool(self.skip_saving_parameters) if after_preemption is None else bool(after_preemption)
        )

    def _setup_components(self, model: DictConfig, lora: DictConfig | None) -> None:
        """The model, on this rank's device, with LoRA adapters when `trainer.lora` asks for them."""
        # Same seed on every rank before building the model: identical initial weights everywhere.
        _seed_everything(self.seed_value)
        self.model: nn.Module = instantiate(model, _convert_="all").to(self.device)
        # LoRA: the frozen base is loaded before the adapters wrap (and rename) the layers they adapt,
        # and before the optimizer, which then holds the adapters alone.
        self.lora = LoRASettings.from_config(_as_container(lora))
        if self.lora is not None:
            self._initialize_weights()
            add_lora_adapters(self.model, self.lora)
            self.lora_base_checksum = base_weights_checksum(self.model)

    def _setup_dataloaders(self, data: DictConfig) -> None:
        """The train data, and the val data only where the mode uses it (train_only never reads the val
        list)."""
        self.train_data = instantiate(data.train, _convert_="all") if data.get("train") is not None else None
        wants_val = self.mode in ("train", "val") and data.get("val") is not None
        self.val_data = instantiate(data.val, _convert_="all") if wants_val else None
        if self.mode != "val" and self.train_data is None:
            raise ValueError(f"trainer.mode={self.mode} needs trainer.data.train")
        if self.mode == "val" and self.val_data is None:
            raise ValueError("trainer.mode=val needs trainer.data.val")

    def _setup_loss(self, loss: DictConfig | None) -> None:
        self.loss_fns: dict[str, nn.Module] = {k: instantiate(v) for k, v in (loss or {}).items()}
        if self.mode != "val" and not self.loss_fns:
            raise ValueError("trainer.loss is empty; configure trainer.loss.all (MultiStepMultiMasksAndIous)")

    def _construct_optimizers(self, optim: DictConfig | None) -> None:
        """AMP and its GradScaler, gradient accumulation and clipping, and the optimizer (not in mode val)."""
        optim = optim or OmegaConf.create({})
        self.optim_conf = optim
        amp_conf = optim.get("amp") or {}
        self.amp_dtype = getattr(torch, amp_conf.get("amp_dtype", "bfloat16"))
        self.amp_enabled = bool(amp_conf.get("enabled", False)) and self.device.type == "cuda"
        # As upstream: a GradScaler whenever AMP is on (bf16 too), so steps with inf/NaN gradients are skipped.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_enabled)
        self.accumulation_steps = int(optim.get("gradient_accumulation_steps", 1))
        if self.accumulation_steps < 1:
            raise ValueError(f"optim.gradient_accumulation_steps must be >= 1, got {self.accumulation_steps}")
        self.gradient_clipper: GradientClipper | None = (
            instantiate(optim.gradient_clip) if optim.get("gradient_clip") is not None else None
        )
        self.optim = None
        if self.mode != "val":
            self.optim = build_optimizer_from_config(self.model, optim)

    def _setup_training_state(self) -> None:
        """Epoch, step and loss records from the checkpoint to resume from, else the initial weights."""
        self.skipped_steps = 0  # optimizer steps skipped for non-finite gradients
        self.epoch = 0
        self.steps = 0
        self.batches_done_in_epoch = 0  # > 0 only in a checkpoint written mid-epoch
        self.loss_state: dict[str, float | None] = {"last_train_loss": None, "best_val_jf": None}
        self._check_skipped_parameters_frozen()
        if not self._resume() and self.lora is None:
            self._initialize_weights()

    def _setup_ddp_distributed_training(self, dist_conf: Mapping) -> None:
        """DDP around the model when several ranks train. Wrapped after loading: DDP's initial broadcast
        then spreads rank 0's loaded weights."""
        self.ddp_model: nn.Module = self.model
        if not self.ctx.is_distributed or self.mode == "val":
            return
        self.ddp_model = DistributedDataParallel(
            self.model,
            device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None,
            find_unused_parameters=bool(dist_conf.get("find_unused_parameters", True)),
        )
        comms_dtype = dist_conf.get("comms_dtype")
        if comms_dtype is not None:  # upstream: gradients all-reduced in bf16 or fp16
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            if str(comms_dtype) not in ("bfloat16", "float16"):
                raise ValueError(
                    f"trainer.distributed.comms_dtype must be bfloat16 or float16, got {comms_dtype!r}"
                )
            hook = (
                default_hooks.bf16_compress_hook
                if comms_dtype == "bfloat16"
                else default_hooks.fp16_compress_hook
            )
            self.ddp_model.register_comm_hook(None, hook)
            logger.info("gradients are all-reduced in %s", comms_dtype)

    # ------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------------

    def _initialize_weights(self) -> None:
        initializer = self.checkpoint_conf.get("model_weight_initializer")
        if initializer is None:
            logger.warning("no trainer.checkpoint.model_weight_initializer: training from random weights")
            return
        instantiate(initializer)(model=self.model)

    def _check_skipped_parameters_frozen(self) -> None:
        """skip_saving_parameters leaves tensors out of checkpoints: a trainable one would be lost."""
        if not self.skip_saving_parameters:
            return
        trainable = [
            n
            for n, p in self.model.named_parameters()
            if p.requires_grad and any(fnmatch.fnmatchcase(n, pat) for pat in self.skip_saving_parameters)
        ]
        if trainable:
            raise ValueError(
                f"trainer.checkpoint.skip_saving_parameters matches trainable parameters {trainable[:5]} "
                f"({len(trainable)} in all); checkpoints would lose their training. Freeze them "
                "(e.g. model.freeze_image_encoder=true) or narrow the patterns"
            )

    def _saved_model_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict() if self.lora is None else adapter_state_dict(self.model)
        if not self.skip_saving_parameters:
            return state
        return {
            k: v
            for k, v in state.items()
            if not any(fnmatch.fnmatchcase(k, pat) for pat in self.skip_saving_parameters)
        }

    def _resume_source(self) -> Path | None:
        local = self.save_dir / CHECKPOINT_NAME
        if local.is_file():
            return local
        remote = self.checkpoint_conf.get("resume_from")
        if remote:
            return local_copy(str(remote), cache_dir=self.save_dir / ".cache")
        return None

    def _resume(self) -> bool:
        """Load the checkpoint to resume from, if any; True when one was loaded.

        Rank 0 decides: its save_dir/checkpoint.pt, else trainer.checkpoint.resume_from, else a fresh start.
        With several ranks every other rank then holds exactly rank 0's state: its own local
        checkpoint.pt when that is the same one (same epoch, step, batches and model checksum), otherwise
        the state rank 0 sends over the process group; a differing local checkpoint (nodes keep their own
        disks, and a node's copy from object storage may be older) is named in a warning and left unused.
        """
        state: dict[str, Any] | None = None
        point: ResumePoint | None = None
        if self.ctx.is_main:
            source = self._resume_source()
            if source is not None:
                state = read_checkpoint_file(source)  # a damaged file is named, not a torch traceback
                point = ResumePoint.of(source, state)
        if self.ctx.is_distributed:
            point, state = self._rank0_resume_state(point, state)
        if point is None or state is None:
            return False
        if self.lora is not None:
            check_same_base(state.get("lora"), self.lora_base_checksum, point.source)
            load_adapter_state_dict(self.model, state["model"], source=point.source)
        else:
            if self.initialize_after_preemption:
                self._initialize_weights()
            self._load_model_state(state["model"], point.source)
        if self.optim is not None and state.get("optimizer") is not None:
            optimizer_state = state["optimizer"]
            if isinstance(state.get("steps"), Mapping) and self.lora is None:
                optimizer_state = self._optimizer_state_of_upstream(optimizer_state, point.source)
            self.optim.load_state_dict(optimizer_state)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state.get("epoch", 0))
        self.steps = _steps_of(state)
        self.batches_done_in_epoch = int(state.get("batches_done_in_epoch", 0))
        # Upstream's "loss" is the loss module's (empty) state dict: only our own keys are taken.
        self.loss_state.update({k: v for k, v in (state.get("loss") or {}).items() if k in self.loss_state})
        logger.info(
            "resumed from %s: epoch %d, step %d, %d batches of the epoch done",
            point.source,
            self.epoch,
            self.steps,
            self.batches_done_in_epoch,
        )
        return True

    def _optimizer_state_of_upstream(self, saved: Mapping, source: str) -> Mapping:
        """A checkpoint of upstream's trainer (its `steps` is a dict) holds the optimizer state in
        upstream's param-group layout: re-indexed for ours through parameter names."""
        sizes = [len(g["params"]) for g in saved["param_groups"]]
        if sizes == [len(g["params"]) for g in self.optim.optimizer.param_groups]:
            try:
                upstream = [len(g) for g in upstream_param_groups(self.model, self.optim_conf)]
            except ValueError:
                upstream = None
            if upstream != sizes:
                return saved  # our own layout (a converted checkpoint)
        try:
            remapped = optimizer_state_from_upstream(self.optim, self.model, self.optim_conf, saved)
        except ValueError as err:
            raise ValueError(f"checkpoint {source}: {err}") from None
        logger.info("optimizer state of %s read in upstream's param-group layout", source)
        return remapped

    def _load_model_state(self, model_state: Mapping[str, torch.Tensor], source: str) -> None:
        """Strict, except the skip_saving_parameters a checkpoint leaves out (upstream's rule)."""
        missing, unexpected = self.model.load_state_dict(model_state, strict=False)
        allowed = [n for n in missing if any(fnmatch.fnmatchcase(n, p) for p in self.skip_saving_parameters)]
        missing = [n for n in missing if n not in allowed]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {source} does not fit the model: missing {missing[:5]} ({len(missing)}), "
                f"unexpected {unexpected[:5]} ({len(unexpected)})"
            )

    def _rank0_resume_state(
        self, point: ResumePoint | None, state: dict[str, Any] | None
    ) -> tuple[ResumePoint | None, dict[str, Any] | None]:
        """Rank 0's resume point and a training state equal to rank 0's, on every rank (collective)."""
        rank = self.ctx.rank
        point = broadcast_object(point, self.device)
        if not self.ctx.is_main:
            local = self.save_dir / CHECKPOINT_NAME
            if local.is_file():
                local_state = torch.load(local, map_location="cpu", weights_only=True)
                local_point = ResumePoint.of(local, local_state)
                if point is not None and local_point.same_state(point):
                    point, state = local_point, local_state
                elif point is None:
                    logger.warning(
                        "rank %d: ignoring its checkpoint %s: rank 0 has none to resume from and starts "
                        "from the initial weights, so every rank does",
                        rank,
                        local_point.describe(),
                    )
                else:
                    logger.warning(
                        "rank %d: its checkpoint %s is not rank 0's %s; resuming from rank 0's state, "
                        "sent over the process group",
                        rank,
                        local_point.describe(),
                        point.describe(),
                    )
            elif point is not None:
                logger.info(
                    "rank %d: no checkpoint at %s; resuming from rank 0's %s, sent over the process group",
                    rank,
                    local,
                    point.describe(),
                )
        if point is None:
            return None, None
        if not all_ranks_true(state is not None, self.device):
            received = broadcast_object(state if self.ctx.is_main else None, self.device)
            if state is None:
                state = received
                got = ResumePoint.of(f"rank 0's {point.source} (sent over the process group)", state)
                if not got.same_state(point):
                    raise RuntimeError(
                        f"rank {rank}: the state received from rank 0 is {got.describe()}, not rank 0's "
                        f"{point.describe()}; restart the job"
                    )
                point = got
        return point, state

    def _checkpoint_state(self) -> dict[str, Any]:
        extra = {}
        if self.lora is not None:
            extra["lora"] = self.lora.to_dict() | {"base_checksum": self.lora_base_checksum}
        return {
            **extra,
            "model": self._saved_model_state(),
            "optimizer": self.optim.state_dict() if self.optim is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "steps": self.steps,
            "batches_done_in_epoch": self.batches_done_in_epoch,
            "loss": dict(self.loss_state),
        }

    def save_checkpoint(self, name: str = CHECKPOINT_NAME) -> Path | None:
        """Write the full training state to save_dir/name atomically (rank 0); returns the path there."""
        if not self.ctx.is_main:
            return None
        path = save_checkpoint_atomic(self._checkpoint_state(), self.save_dir / name)
        logger.info("saved checkpoint %s (epoch %d, step %d)", path, self.epoch, self.steps)
        return path

    def save_merged_checkpoint(self) -> Path | None:
        """LoRA runs: write the adapters merged into the base weights as {"model": plain state dict}
        (rank 0); returns the path there, None on other ranks or without LoRA."""
        if self.lora is None or not self.ctx.is_main:
            return None
        path = save_checkpoint_atomic(
            {"model": merged_state_dict(self.model), "merged_lora": self.lora.to_dict(), "epoch": self.epoch},
            self.save_dir / MERGED_CHECKPOINT_NAME,
        )
        logger.info("saved the LoRA adapters merged into the base weights: %s", path)
        return path

    # ------------------------------------------------------------------------------------------------------
    # Loop
    # ------------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Train/validate according to `mode`; returns the last validation metrics (may be empty)."""
        try:
            if self.mode == "val":
                return self.validate()
            return self._train_all_epochs()
        finally:
            self.close()

    def close(self) -> None:
        """Flush TensorBoard and detach this trainer's log file (safe to call twice)."""
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _train_all_epochs(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.epoch >= self.max_epochs:
            logger.info("checkpoint is at epoch %d of %d: nothing left to train", self.epoch, self.max_epochs)
        while self.epoch < self.max_epochs:
            epoch = self.epoch
            self._seed_epoch(epoch)
            loader = (
                self.train_data.get_loader(epoch=epoch)
                if hasattr(self.train_data, "get_loader")
                else self.train_data
            )
            self.train_epoch(loader, epoch)
            self.epoch = epoch + 1
            self.batches_done_in_epoch = 0
            is_last = self.epoch == self.max_epochs
            if (
                self.mode == "train"
                and self.val_data is not None
                and (self.epoch % self.val_epoch_freq == 0 or is_last)
            ):
                metrics = self.validate()
                best = self.loss_state.get("best_val_jf")
                if best is None or metrics["J&F"] > best:
                    self.loss_state["best_val_jf"] = metrics["J&F"]
                    self.save_checkpoint(BEST_CHECKPOINT_NAME)
            self.save_checkpoint()
            kept = epoch_checkpoint_name(self.epoch, self.save_freq, self.save_list)
            if kept is not None:
                self.save_checkpoint(kept)
            barrier()
        self.save_merged_checkpoint()
        return metrics

    def _seed_epoch(self, epoch: int) -> None:
        _seed_everything(self.seed_value * 100_003 + epoch * 1_009 + self.ctx.rank)
        reseed = getattr(self.model, "reseed_prompts", None)
        if reseed is not None:
            # Rank-independent: every rank draws the same prompt plan, as one process would for the batch.
            reseed(self.seed_value * 100_003 + epoch)

    def _seed_step(self, epoch: int) -> None:
        """Reseed at a mid-epoch checkpoint point, on every rank and whether or not this run stops there,
        so a run resumed from that checkpoint draws exactly what the uninterrupted run draws."""
        base = self.seed_value * 100_003 + epoch * 1_009 + self.steps * 7_919
        _seed_everything(base + 104_729 * (self.ctx.rank + 1))
        reseed = getattr(self.model, "reseed_prompts", None)
        if reseed is not None:
            reseed(base)

    def _loss_fn(self, batch: Any) -> nn.Module:
        key = getattr(batch, "dict_key", "all")
        if key in self.loss_fns:
            return self.loss_fns[key]
        if "all" in self.loss_fns:
            return self.loss_fns["all"]
        raise KeyError(
            f"no loss configured for batches of {key!r}; add trainer.loss.{key} or trainer.loss.all"
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_enabled:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def train_epoch(self, loader: Iterable, epoch: int) -> None:
        """One pass over `loader`: forward, loss, backward, and an optimizer step every
        `gradient_accumulation_steps` batches (and at the end of the epoch)."""
        assert self.optim is not None
        self.ddp_model.train()
        num_batches = len(loader)  # type: ignore[arg-type]
        if num_batches == 0:
            raise ValueError(
                f"epoch {epoch}: the training loader yields no batches; check trainer.data.train"
            )
        num_updates = math.ceil(num_batches / self.accumulation_steps)
        skip = self.batches_done_in_epoch  # batches a mid-epoch checkpoint already trained on
        updates_done = skip // self.accumulation_steps
        totals: dict[str, float] = defaultdict(float)
        seen = 0
        window_start, window_samples = time.perf_counter(), 0
        progress = tqdm(
            loader, total=num_batches, desc=f"epoch {epoch}", disable=not self.ctx.is_main, leave=False
        )
        for batch_idx, batch in enumerate(progress):
            if batch_idx < skip:
                if batch_idx + 1 == skip:
                    logger.info("skipped the %d batches of epoch %d trained before the restart", skip, epoch)
                    self._seed_step(epoch)
                continue
            is_update = (batch_idx + 1) % self.accumulation_steps == 0 or batch_idx + 1 == num_batches
            batch = batch.to(self.device, non_blocking=True)
            sync = (
                contextlib.nullcontext()
                if is_update or self.ddp_model is self.model
                else self.ddp_model.no_sync()
            )
            with sync:
                with self._autocast():
                    outputs = self.ddp_model(batch)
                    losses = self._loss_fn(batch)(outputs, batch.masks)
                core = losses[CORE_LOSS_KEY]
                self._check_finite(core, losses, batch, epoch, batch_idx)
                self.scaler.scale(core / self.accumulation_steps).backward()
            for key, value in losses.items():
                totals[key] += float(value.detach())
            seen += 1
            window_samples += batch.num_videos
            if not is_update:
                continue
            # The schedule advances per optimizer step, so accumulation does not change the lr curve.
            grad_norm = self._optimizer_step((epoch + updates_done / num_updates) / self.max_epochs)
            updates_done += 1
            if self.steps % self.log_freq == 0:
                elapsed = time.perf_counter() - window_start
                self._log_step(losses, grad_norm, window_samples / max(elapsed, 1e-9))
                window_start, window_samples = time.perf_counter(), 0
            if (
                self.save_every_n_steps
                and self.steps % self.save_every_n_steps == 0
                and batch_idx + 1 < num_batches
            ):
                self.batches_done_in_epoch = batch_idx + 1
                self.save_checkpoint()
                self._seed_step(epoch)
        self._log_epoch(epoch, totals, max(seen, 1))

    def _optimizer_step(self, where: float) -> torch.Tensor | None:
        """One optimizer step over the accumulated gradients, at `where` (the fraction of training done)
        on the lr schedule; a step whose gradients are not finite is skipped and counted. Returns the
        gradient norm the clipper measured (None without a clipper)."""
        self.optim.step_schedulers(where)
        self.scaler.unscale_(self.optim.optimizer)
        grad_norm = self.gradient_clipper(self.model) if self.gradient_clipper is not None else None
        # DDP has averaged the gradients, so every rank takes the same decision.
        if _grads_finite(self.model):
            self.scaler.step(self.optim.optimizer)
        else:
            self.skipped_steps += 1
            logger.warning(
                "step %d skipped: non-finite gradients (%d step(s) skipped so far)",
                self.steps + 1,
                self.skipped_steps,
            )
            if self.tb_writer is not None:
                self.tb_writer.add_scalar("train/skipped_steps", self.skipped_steps, self.steps + 1)
        self.scaler.update()
        self.optim.zero_grad(set_to_none=True)
        self.steps += 1
        return grad_norm

    def _log_epoch(self, epoch: int, totals: Mapping[str, float], seen: int) -> None:
        """The epoch's mean of each loss term over its `seen` batches: logged, in TensorBoard, and the
        core loss kept for the checkpoint."""
        self.loss_state["last_train_loss"] = totals[CORE_LOSS_KEY] / seen
        logger.info(
            "epoch %d done: %s", epoch, ", ".join(f"{k}={v / seen:.4f}" for k, v in sorted(totals.items()))
        )
        if self.tb_writer is not None:
            for key, value in totals.items():
                self.tb_writer.add_scalar(f"train_epoch/{key}", value / seen, epoch)

    def _check_finite(
        self, core: torch.Tensor, losses: Mapping[str, torch.Tensor], batch: Any, epoch: int, batch_idx: int
    ) -> None:
        """Stop every rank together (before any backward) when one rank's loss is NaN or infinite."""
        local_ok = bool(torch.isfinite(core.detach()).item())
        if all_ranks_true(local_ok, self.device):
            return
        videos = sorted({int(v) for v in batch.metadata.unique_objects_identifier[0, :, 0].tolist()})
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        where = "on this rank" if not local_ok else "on another rank"
        raise NonFiniteLossError(
            f"non-finite loss {where} at epoch {epoch}, batch {batch_idx} of the epoch, optimizer step "
            f"{self.steps + 1} (rank {self.ctx.rank}; {terms}; video ids {videos}). Training stopped; the "
            f"last good checkpoint is {self.save_dir / CHECKPOINT_NAME} if it exists. Lower the learning "
            "rate (scratch.base_lr / scratch.vision_lr), check those videos, or disable AMP "
            "(trainer.optim.amp.enabled=false)."
        )

    def _log_step(
        self, losses: Mapping[str, torch.Tensor], grad_norm: torch.Tensor | None, samples_per_s: float
    ) -> None:
        lrs = [g["lr"] for g in self.optim.optimizer.param_groups]
        values = {k: float(v.detach()) for k, v in losses.items()}
        logger.info(
            "step %d: loss %.4f, lr %.3g..%.3g, grad norm %s, %.2f samples/s",
            self.steps,
            values[CORE_LOSS_KEY],
            min(lrs),
            max(lrs),
            "n/a" if grad_norm is None else f"{float(grad_norm):.4g}",
            samples_per_s,
        )
        if self.tb_writer is None:
            return
        for key, value in values.items():
            self.tb_writer.add_scalar(f"train/{key}", value, self.steps)
        self.tb_writer.add_scalar("train/lr_max", max(lrs), self.steps)
        self.tb_writer.add_scalar("train/samples_per_s", samples_per_s, self.steps)
        if grad_norm is not None:
            self.tb_writer.add_scalar("train/grad_norm", float(grad_norm), self.steps)
        if self.device.type == "cuda":
            self.tb_writer.add_scalar(
                "train/peak_mem_gb", torch.cuda.max_memory_allocated() / 2**30, self.steps
            )

    # ------------------------------------------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Semi-supervised VOS on the val data (as the model's eval prompts say, by default the first-frame
        masks), scored as the benchmarks' evaluators score it: each frame's mask logits brought to the
        video's own size (bilinear, as the video predictor returns them) against the ground-truth mask read
        at that size. Returns J, F and J&F in percent averaged over the objects of every val clip, each clip
        counted once whatever the number of ranks (DistributedSampler pads a short shard with repeats),
        and the val loss."""
        if self.val_data is None:
            return {}
        self.model.eval()
        loader = (
            self.val_data.get_loader(epoch=self.epoch)
            if hasattr(self.val_data, "get_loader")
            else self.val_data
        )
        truth = _GroundTruth(self.val_data)
        # clip key (video ids of the batch, first frame id) -> [J sum, F sum, objects, loss]
        per_clip: dict[tuple[int, ...], list[float]] = {}
        for batch in tqdm(loader, desc="val", disable=not self.ctx.is_main, leave=False):
            batch = batch.to(self.device, non_blocking=True)
            with self._autocast():
                outputs = self.model(batch)
                loss = (
                    float(self._loss_fn(batch)(outputs, batch.masks)[CORE_LOSS_KEY]) if self.loss_fns else 0.0
                )
            ids = batch.metadata.unique_objects_identifier.cpu()  # [T, O, (video, object, frame)]
            key = (*sorted({int(v) for v in ids[0, :, 0].tolist()}), int(ids[0, 0, 2]))
            j_sum, f_sum = _score_clip(batch, outputs, truth)
            per_clip[key] = [j_sum, f_sum, float(ids.shape[1]), loss]
        if self.ctx.is_distributed:
            import torch.distributed as dist

            gathered: list[dict | None] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, per_clip)
            per_clip = {k: v for part in gathered for k, v in (part or {}).items()}
        self.model.train()
        totals = torch.tensor([v for v in per_clip.values()], dtype=torch.float64).reshape(-1, 4).sum(0)
        num_objects = max(float(totals[2]), 1.0)
        j, f = 100 * float(totals[0]) / num_objects, 100 * float(totals[1]) / num_objects
        metrics = {"J&F": (j + f) / 2, "J": j, "F": f, "loss": float(totals[3]) / max(len(per_clip), 1)}
        logger.info(
            "validation after epoch %d: J&F %.2f, J %.2f, F %.2f, loss %.4f (%d objects in %d clips)",
            self.epoch,
            metrics["J&F"],
            metrics["J"],
            metrics["F"],
            metrics["loss"],
            int(totals[2]),
            len(per_clip),
        )
        if self.tb_writer is not None:
            for key, value in metrics.items():
                self.tb_writer.add_scalar(f"val/{key}", value, self.epoch)
        if not math.isfinite(metrics["loss"]):
            logger.warning("validation loss is not finite (%s)", metrics["loss"])
        return metrics


class _GroundTruth:
    """Ground-truth masks of val frames at their original size, read through the val data sets' raw
    data sets and segment loaders (the transforms resize the batch's masks to the training resolution)."""

    def __init__(self, data: Any) -> None:
        self._raw: list[Any] = []
        stack = list(getattr(data, "datasets", [data]))
        while stack:
            dataset = stack.pop(0)
            if hasattr(dataset, "video_dataset"):
                self._raw.append(dataset.video_dataset)
            stack.extend(getattr(dataset, "datasets", []))
            if hasattr(dataset, "dataset"):
                stack.append(dataset.dataset)
        self._index: dict[int, tuple[Any, int]] | None = None
        self._loaded: tuple[int, Any] | None = None
        self._frame: tuple[tuple[int, int], Any] | None = None
        self.available = bool(self._raw)

    def _loader(self, video_id: int) -> Any:
        if self._loaded is not None and self._loaded[0] == video_id:
            return self._loaded[1]
        if self._index is None:
            self._index = {}
            for raw in self._raw:
                for idx in range(len(raw)):
                    self._index.setdefault(int(raw.get_video(idx)[0].video_id), (raw, idx))
        raw, idx = self._index[video_id]
        loader = raw.get_video(idx)[1]
        self._loaded = (video_id, loader)
        return loader

    def mask(self, video_id: int, frame_id: int, object_id: int, size: tuple[int, int]) -> np.ndarray:
        """Object `object_id`'s mask on frame `frame_id` of video `video_id` (all False when absent)."""
        if self._frame is None or self._frame[0] != (video_id, frame_id):
            loader = self._loader(video_id)
            self._frame = ((video_id, frame_id), loader.load(frame_id))  # every object of the frame
        segments = self._frame[1]
        segment = segments.get(object_id) if segments is not None else None
        if segment is None:
            return np.zeros(size, dtype=bool)
        return segment.cpu().numpy() > 0


def _score_clip(batch: Any, outputs: list[dict], truth: _GroundTruth) -> tuple[float, float]:
    """Sums over the clip's objects of each object's mean J and F over the scored frames (all but the
    first, the prompted one), at the original resolution when the ground truth can be read there."""
    from sam2.eval.metrics import score_binary

    ids = batch.metadata.unique_objects_identifier.cpu()
    sizes = batch.metadata.frame_orig_size.cpu()
    frames = range(1, batch.num_frames) if batch.num_frames > 1 else range(batch.num_frames)
    j_sum = f_sum = 0.0
    for obj in range(ids.shape[1]):
        j_obj = f_obj = 0.0
        for t in frames:
            logits = outputs[t]["pred_masks"][obj : obj + 1].float()
            if truth.available:
                video_id, object_id, frame_id = (int(v) for v in ids[t, obj])
                height, width = (int(v) for v in sizes[t, obj])
                gt = truth.mask(video_id, frame_id, object_id, (height, width))
            else:
                gt = batch.masks[t, obj].cpu().numpy() > 0
            pred = F.interpolate(logits, size=gt.shape, mode="bilinear", align_corners=False)[0, 0] > 0
            j, f = score_binary(gt, pred.cpu().numpy())
            j_obj += j
            f_obj += f
        j_sum += j_obj / len(frames)
        f_sum += f_obj / len(frames)
    return j_sum, f_sum
