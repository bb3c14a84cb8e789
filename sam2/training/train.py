"""Entry point: `python -m sam2.training.train -c <config> --use-cluster 0 --num-gpus N [--num-nodes M]
[hydra overrides]`.

Launch modes, chosen from the environment:
- under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set; a PyTorchJob's torchrun reads the PET_* variables):
  this process is one worker of the job;
- one process in all (N * M == 1): training runs in this process;
- otherwise N local worker processes are spawned for this node; with several nodes the node rank comes
  from PET_NODE_RANK / NODE_RANK (or RANK of a pod when LOCAL_RANK is unset) and the rendezvous from
  MASTER_ADDR / MASTER_PORT (or PET_MASTER_ADDR / PET_MASTER_PORT).
With `trainer.accelerator=cpu` the processes train on the CPU and talk over gloo; N is then a process count,
and each of the processes on a machine gets cores // processes threads unless OMP_NUM_THREADS is set
(sam2.utils.cpu_threads; torchrun's own OMP_NUM_THREADS=1 for several processes per node is kept).
The composed config is saved (resolved, with secret-looking values masked) in launcher.experiment_log_dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam2.utils.atomic_io import atomic_write_text
from sam2.utils.cli_errors import debug_enabled, exit_code_for
from sam2.utils.cpu_threads import apply_cpu_threads, plan_cpu_threads
from sam2.utils.network import free_port
from sam2.utils.redaction import mask_secrets, redact_command

logger = logging.getLogger("sam2.training.train")


RECIPE_ASSETS = Path(__file__).resolve().parents[1] / "configs" / "sam2.1_training" / "assets"


def recipe_asset(name: str) -> str:
    """`${recipe_asset:<file>}`: a file shipped beside the recipes (upstream's MOSE sample lists), as an
    absolute path whatever the working directory; raises FileNotFoundError naming it when absent."""
    path = RECIPE_ASSETS / str(name)
    if not path.is_file():
        raise FileNotFoundError(f"recipe asset {name!r} not found in {RECIPE_ASSETS}")
    return str(path)


def register_omegaconf_resolvers() -> None:
    """Resolvers the training configs use: `${times:a,b}`, `${divide:a,b}` (as upstream defines them)
    and `${recipe_asset:<file>}`."""
    for name, fn in (
        ("times", lambda a, b: a * b),
        ("divide", lambda a, b: a / b),
        ("recipe_asset", recipe_asset),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_TRAINER_MODEL_KEY = re.compile(r"^(~|\+\+|\+)?trainer\.model\.")


def _model_alias(override: str) -> str:
    """`trainer.model.<key>` (the upstream spelling) -> `model.<key>`: `trainer.model` is an alias of the
    root `model` node, which the model configs of configs/sam2.1 fill."""
    return _TRAINER_MODEL_KEY.sub(lambda m: f"{m.group(1) or ''}model.", override)


def compose_training_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose a packaged training config (e.g. configs/sam2.1_training/sam2.1_hiera_t_MOSE_finetune.yaml)
    with Hydra overrides, and fill launcher.experiment_log_dir when it is unset."""
    register_omegaconf_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("sam2", version_base="1.2"):
        cfg = compose(config_name=config_name, overrides=[_model_alias(o) for o in overrides])
    if cfg.launcher.get("experiment_log_dir") is None:
        stem = Path(config_name).name.removesuffix(".yaml")
        cfg.launcher.experiment_log_dir = str(Path.cwd() / "sam2_logs" / stem)
    return cfg


def save_resolved_config(cfg: DictConfig, log_dir: str | os.PathLike) -> Path:
    """Write config.yaml (as composed) and config_resolved.yaml (interpolations resolved) into `log_dir`,
    masking values of keys that look like secrets; atomic writes."""
    out = Path(log_dir)
    for name, resolve in (("config.yaml", False), ("config_resolved.yaml", True)):
        data = mask_secrets(OmegaConf.to_container(cfg, resolve=resolve))
        atomic_write_text(out / name, OmegaConf.to_yaml(OmegaConf.create(data)))
    return out / "config_resolved.yaml"


def run_worker(cfg: DictConfig) -> dict[str, float]:
    """Build the Trainer of `cfg` in this process (one rank, as the env:// variables say) and run it."""
    register_omegaconf_resolvers()
    if int(os.environ.get("RANK", "0")) == 0:
        save_resolved_config(cfg, cfg.launcher.experiment_log_dir)
    from sam2.training.utils.distributed import teardown_distributed

    try:
        trainer = instantiate(cfg.trainer, _recursive_=False)
        return trainer.run()
    finally:
        teardown_distributed()


def _spawned_worker(
    local_rank: int, cfg: DictConfig, node_rank: int, nproc: int, world_size: int, threads: int | None
) -> None:
    apply_cpu_threads(threads)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(node_rank * nproc + local_rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_WORLD_SIZE"] = str(nproc)
    _configure_console_logging(int(os.environ["RANK"]))
    run_worker(cfg)


def _first_env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def launch(cfg: DictConfig, num_gpus: int, num_nodes: int) -> dict[str, float]:
    """Run the training job described by `cfg` in the launch mode the environment calls for; returns
    this process's last validation metrics (empty when workers were spawned or nothing was validated)."""
    on_cpu = str(cfg.trainer.get("accelerator", "cuda")) == "cpu"
    if {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= os.environ.keys():
        logger.info("running as rank %s of %s (torchrun)", os.environ["RANK"], os.environ["WORLD_SIZE"])
        if on_cpu:
            local_procs = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
            first = os.environ["LOCAL_RANK"] == "0"
            apply_cpu_threads(plan_cpu_threads(local_procs, "training process(es) of torchrun", log=first))
        return run_worker(cfg)
    world_size = num_gpus * num_nodes
    if world_size == 1:
        if on_cpu:
            apply_cpu_threads(plan_cpu_threads(1, "training process"))
        return run_worker(cfg)

    node_rank_text = _first_env("PET_NODE_RANK", "NODE_RANK", "GROUP_RANK") or (
        os.environ.get("RANK") if num_nodes > 1 else None
    )
    node_rank = int(node_rank_text or 0)
    master_addr = _first_env("MASTER_ADDR", "PET_MASTER_ADDR")
    master_port = _first_env("MASTER_PORT", "PET_MASTER_PORT")
    if num_nodes > 1 and not (master_addr and master_port):
        raise ValueError(
            f"--num-nodes {num_nodes} needs MASTER_ADDR and MASTER_PORT (or PET_MASTER_ADDR/PET_MASTER_PORT, "
            "set by a PyTorchJob) and a node rank (PET_NODE_RANK / NODE_RANK); or launch with torchrun"
        )
    if not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} is outside 0..{num_nodes - 1} (--num-nodes {num_nodes})")
    os.environ["MASTER_ADDR"] = master_addr or "127.0.0.1"
    os.environ["MASTER_PORT"] = master_port or str(free_port())
    logger.info(
        "spawning %d workers on node %d of %d (world size %d, master %s:%s)",
        num_gpus,
        node_rank,
        num_nodes,
        world_size,
        os.environ["MASTER_ADDR"],
        os.environ["MASTER_PORT"],
    )
    threads = plan_cpu_threads(num_gpus, "spawned training processes") if on_cpu else None
    import torch.multiprocessing as mp

    mp.spawn(
        _spawned_worker, args=(cfg, node_rank, num_gpus, world_size, threads), nprocs=num_gpus, join=True
    )
    return {}


def _configure_console_logging(rank: int) -> None:
    """INFO on rank 0's console, warnings and errors only on the others (every rank's file gets INFO)."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def describe_error(err: BaseException) -> str:
    """One line naming the error at the root of `err`: Hydra wraps errors raised while building objects,
    and a spawned worker's error arrives as text ending with its own `Type: message` line."""
    from hydra.errors import InstantiationException

    root = err
    while isinstance(root, InstantiationException) and root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    last = lines[-1] if lines else ""
    if root is not err or not re.match(r"^[\w.]+(Error|Exception): ", last):
        return f"{type(root).__name__}: {' '.join(line.strip() for line in lines)}"
    return last


def _root_error(err: BaseException) -> BaseException:
    """The error Hydra wrapped while building objects (``err`` itself otherwise)."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam2.training.train",
        description="Fine-tune SAM 2 (one process, local workers, or a torchrun / PyTorchJob worker).",
    )
    parser.add_argument(
        "-c",
        "--config",
        required=True,
        help="e.g. configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml",
    )
    parser.add_argument("--use-cluster", type=int, default=0, choices=[0, 1], help="1: SLURM (not supported)")
    parser.add_argument("--num-gpus", type=int, default=None, help="workers per node (processes on the CPU)")
    parser.add_argument("--num-nodes", type=int, default=None, help="nodes in the job")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of a failure (or SAM2_DEBUG=1)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.accelerator=cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    _configure_console_logging(int(os.environ.get("RANK", "0")))
    if args.use_cluster:
        print(
            "error: --use-cluster 1 (SLURM) is not supported here; run with --use-cluster 0 locally, "
            "under torchrun, or as a PyTorchJob (k8s/pytorchjob.yaml)",
            file=sys.stderr,
        )
        return 2
    overrides = list(args.overrides)
    try:
        cfg = compose_training_config(args.config, overrides)
    except Exception as err:  # Hydra's errors name the config/override at fault
        print(
            f"error: cannot compose {args.config!r} with [{redact_command(overrides)}]: {err}",
            file=sys.stderr,
        )
        return 2
    num_gpus = args.num_gpus if args.num_gpus is not None else int(cfg.launcher.gpus_per_node)
    num_nodes = args.num_nodes if args.num_nodes is not None else int(cfg.launcher.num_nodes)
    if num_gpus < 1 or num_nodes < 1:
        print("error: --num-gpus and --num-nodes must be >= 1", file=sys.stderr)
        return 2
    cfg.launcher.gpus_per_node = num_gpus
    cfg.launcher.num_nodes = num_nodes
    try:
        metrics = launch(cfg, num_gpus, num_nodes)
    except Exception as err:
        logger.debug("training failed", exc_info=True)
        if args.debug or debug_enabled():
            traceback.print_exception(err, file=sys.stderr)
        text = describe_error(err)
        print(f"error: {text}", file=sys.stderr)
        # 2 for bad data or settings (a damaged checkpoint, a missing mask), 1 when training itself failed
        return exit_code_for(_root_error(err))
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        print("validation: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    print(f"{cfg.trainer.mode} finished; outputs in {cfg.launcher.experiment_log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
