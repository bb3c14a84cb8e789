"""One training node: fetch inputs, run `torchrun` on the training entry point, publish outputs.

Every pod of the PyTorchJob runs `python -m sam2.launch.training_node ...`, and so does every "node" of
the local launcher, so the cluster and the laptop share one code path:

1. the train videos of the data set (a published `s3://` folder, or a local folder) are staged on the
   node's scratch disk, frames and masks of the videos in the train list and nothing else, each file
   checked against the marker and each video against the manifest (`sam2.data.staging`). Staging holds a
   lock in the data folder, so processes sharing it (the local ranks of a node, or every node on a
   ReadWriteMany volume named by `SAM2_SHARED_DATA_DIR`) download once and the others wait; stamped
   videos are skipped after a restart, so an interrupted staging resumes;
2. the run's newest complete checkpoint set is synced back into the experiment folder, each file checked
   against its marker (`resume_checkpoints`), so a replaced pod (the job's restartPolicy ExitCode replaces
   it after a signal) resumes from it: the trainer auto-resumes from
   `<experiment_log_dir>/checkpoints/checkpoint.pt`;
3. `torchrun -m sam2.training.train -c CONFIG --use-cluster 0 ...` runs; torchrun takes the node count,
   node rank, processes per node and master address from the `PET_*` variables the training operator
   (or the local launcher) sets;
4. node rank 0 mirrors checkpoints to the run folder while training runs and publishes checkpoints and
   TensorBoard logs when it ends. The checkpoints go through `ObjectStore.replace_folder`, so a node
   killed at any moment of that upload (SIGKILL after the grace period, the OOM killer, node loss) leaves
   the previous set or the new one whole in S3 (`checkpoints/`, or `checkpoints.incoming/` while a new
   set is being moved in), never none and never a mix.

The node is PID 1 of its container, and PID 1 ignores a signal it has no handler for, so `main` installs
SIGTERM/SIGINT handlers (`GracefulStop`): the kubelet's SIGTERM (eviction, preemption, the job deleted) is
forwarded to torchrun, which stops its workers; after at most `--stop-grace-s` node rank 0 uploads the
newest local checkpoint through the same mirror, where a restarted replica resumes from, and the node
exits 128 + the signal (143), which `restartPolicy: ExitCode` retries. A second signal does not cut the
upload short. The pod's terminationGracePeriodSeconds (k8s/pytorchjob.yaml) leaves time for both.

`--run-uri` and `--dataset-uri` may be `s3://` URIs (credentials from the environment, see
`sam2.storage`) or local folders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam2.data.layout import SHARED_DATA_ENV  # noqa: F401 - re-exported; defined once in sam2.data.layout
from sam2.data.staging import dataset_dir, stage_videos
from sam2.launch.owner_watch import start_owner_watch
from sam2.storage import (
    MARKER_NAME,
    FolderVersion,
    ObjectStore,
    StorageIntegrityError,
    StorageNotFoundError,
    is_s3_uri,
)
from sam2.utils.cli_errors import EXIT_UNREACHABLE, debug_enabled, report_failure
from sam2.utils.redaction import redact_command

logger = logging.getLogger(__name__)

TRAIN_MODULE = "sam2.training.train"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
INIT_CHECKPOINT_OVERRIDE = "trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_STOP_GRACE_S = 90.0
"""How long a stopping node waits for torchrun (which gives its workers 30 s, then SIGKILLs them) before
killing it; the pod's terminationGracePeriodSeconds must leave room for the checkpoint upload after it."""


@dataclass(frozen=True)
class NodeTopology:
    """Where this node sits in the job, as torchrun will see it (from the PET_* variables)."""

    num_nodes: int
    node_rank: int
    procs_per_node: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NodeTopology:
        env = dict(os.environ if env is None else env)
        try:
            procs = int(env.get("PET_NPROC_PER_NODE", "1"))
        except ValueError:
            raise ValueError(
                f"PET_NPROC_PER_NODE={env['PET_NPROC_PER_NODE']!r}: set nprocPerNode to a number of processes"
            ) from None
        return cls(int(env.get("PET_NNODES", "1")), int(env.get("PET_NODE_RANK", "0")), procs)


def dataset_overrides(data_dir: Path, file_list: Path) -> list[str]:
    """Hydra overrides that point the upstream training config at a local copy of the data set."""
    if not file_list.is_file():
        raise FileNotFoundError(
            f"training video list {file_list} does not exist; run the split step first "
            f"(python -m sam2.tools.split_dataset) or pass --train-list"
        )
    return [
        f"dataset.img_folder={data_dir / 'JPEGImages'}",
        f"dataset.gt_folder={data_dir / 'Annotations'}",
        f"dataset.file_list_txt={file_list}",
    ]


def refuse_in_training_validation(overrides: Sequence[str]) -> None:
    """A node stages only the train videos, so `trainer.mode=train` (validate during training) has nothing to
    validate on: the recipe's val list names videos that are not on the node. The pipeline scores its val
    split in the infer and evaluate steps instead. Raises ValueError naming the override."""
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "trainer.mode" and value.strip() != "train_only":
            raise ValueError(
                f"training override {item!r}: a training node stages only the train split, so it cannot "
                "validate during training; the pipeline scores the val split in its infer and evaluate steps. "
                "Leave trainer.mode at train_only, or run `python -m sam2.training.train` yourself with "
                "dataset.val_file_list_txt pointing at staged val videos."
            )


def torchrun_command(
    config: str,
    topology: NodeTopology,
    overrides: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The command one node runs; torchrun reads --nnodes/--node-rank/... from the PET_* variables.

    With `PET_RDZV_BACKEND=c10d` in `env` (default: this process's environment; the PyTorchJob template
    sets it, with PET_RDZV_ID, PET_RDZV_CONF=join_timeout=... and PET_MAX_RESTARTS) the nodes meet at a
    c10d rendezvous on the master (`--rdzv-endpoint` PET_MASTER_ADDR:PET_MASTER_PORT, which the operator
    sets; a PET_RDZV_ENDPOINT wins): a node that restarts joins again, and the others' agents restart
    their workers to take it in, instead of waiting out the process-group timeout. Ranks then follow the
    sorted host names (torch dynamic_rendezvous `_assign_ranks`), so `<job>-master-0` stays rank 0 before
    `<job>-worker-N`. Without it (local runs) the rendezvous is static, ranks from PET_NODE_RANK.
    """
    env = os.environ if env is None else env
    rendezvous: list[str] = []
    if env.get("PET_RDZV_BACKEND") == "c10d" and not env.get("PET_RDZV_ENDPOINT"):
        if not env.get("PET_MASTER_ADDR"):
            raise ValueError("PET_RDZV_BACKEND=c10d needs PET_MASTER_ADDR (the training operator sets it)")
        rendezvous = ["--rdzv-endpoint", f"{env['PET_MASTER_ADDR']}:{env.get('PET_MASTER_PORT', '29400')}"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "-m",
        TRAIN_MODULE,
        "-c",
        config,
        "--use-cluster",
        "0",
        "--num-gpus",
        str(topology.procs_per_node),
        "--num-nodes",
        str(topology.num_nodes),
        *overrides,
    ]


# Under the PyTorchJob's restartPolicy ExitCode, 1-127 fail the job and 128-255 replace the pod
# (training-operator pkg/util/train/train_util.go). A node that lost the rendezvous (the master, which hosts
# it, was killed or evicted) exits with this code, so it is replaced and rejoins the restarted master
# instead of failing the job; a worker's Python error (torchrun exit 1) stays permanent.
EXIT_RENDEZVOUS_LOST = 200
TORCHRUN_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"  # where torchrun's agent writes the error it died of
RENDEZVOUS_LOST_ERRORS = frozenset(
    {"RendezvousConnectionError", "RendezvousTimeoutError", "DistNetworkError", "DistStoreError"}
)


def exit_code_for_torchrun_failure(returncode: int, env: Mapping[str, str] | None = None) -> int:
    """The exit code this node reports for a failed torchrun: 128 + signal when torchrun was killed,
    `EXIT_RENDEZVOUS_LOST` when its agent died of a rendezvous or store error (read from the JSON file
    `TORCHELASTIC_ERROR_FILE` names, which torch's `@record` writes: {"message": {"message": "<type>:
    ..."}}), else torchrun's own code (1 when a worker failed)."""
    if returncode < 0:
        return 128 - returncode
    path = (os.environ if env is None else env).get(TORCHRUN_ERROR_FILE)
    if path and Path(path).is_file():
        try:
            message = json.loads(Path(path).read_text())["message"]
            text = message["message"] if isinstance(message, dict) else str(message)
        except (OSError, ValueError, KeyError, TypeError):
            text = ""
        if text.split(":", 1)[0].strip() in RENDEZVOUS_LOST_ERRORS:
            logger.error(
                "torchrun lost the rendezvous (%s): exiting %d so the pod is replaced and rejoins",
                text.splitlines()[0],
                EXIT_RENDEZVOUS_LOST,
            )
            return EXIT_RENDEZVOUS_LOST
    return returncode or 1


class NodeStopped(Exception):
    """The node got SIGTERM/SIGINT and stopped training; it exits `exit_code` (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


class GracefulStop:
    """SIGTERM/SIGINT handling of a training node (PID 1 of its pod), one instance per node process.

    Before training starts (staging, resume download) a signal ends the process at once with 128 + the
    signal: both are resumable and there is nothing new to upload. Once `run_torchrun` is about to start,
    the first signal is forwarded to torchrun (in a session of its own, so it gets it exactly once) and
    torchrun gets `grace_s` to stop before it is SIGKILLed; the caller then uploads and raises
    `NodeStopped`. Later signals are logged and otherwise ignored, so they cannot cut the upload short.
    """

    def __init__(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self._signalled_at = 0.0
        self._training = False
        self._forwarded = False
        self._child: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, Any] = {}
        self.final_exit_code: int | None = None  # set by stop_for_good: exit with it, not 128 + signal

    def install(self) -> None:
        """Handle STOP_SIGNALS in this (the main) thread until `restore`."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def stop_for_good(self, exit_code: int) -> None:
        """Stop as on SIGTERM (from any thread), but exit `exit_code` instead of 128 + the signal, e.g. a
        permanent 1-127 when the pipeline step that owns the job is over (`sam2.launch.owner_watch`)."""
        self.final_exit_code = exit_code
        os.kill(os.getpid(), signal.SIGTERM)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            logger.warning(
                "got %s while stopping (after %s): the checkpoint upload goes on",
                name,
                signal.Signals(self.signum).name,
            )
            return
        self.signum, self._signalled_at = signum, time.monotonic()
        if not self._training:
            code = self.final_exit_code or 128 + signum
            logger.warning("got %s before training started: exiting %d (staging resumes)", name, code)
            logging.shutdown()
            os._exit(code)
        logger.warning(
            "got %s: stopping torchrun (up to %.0f s), then uploading the newest checkpoint",
            name,
            self.grace_s,
        )
        self._forward()

    def _forward(self) -> None:
        child = self._child
        if child is not None and self.signum is not None and not self._forwarded and child.poll() is None:
            self._forwarded = True
            child.send_signal(self.signum)

    def run_torchrun(self, cmd: Sequence[str], env: Mapping[str, str] | None) -> int:
        """Run `cmd` to its end, or stop it on a signal; its return code (negative: killed by a signal).
        Returns -SIGTERM at once when a signal came before it started."""
        self._training = True
        if self.signum is not None:
            return -self.signum
        self._child = subprocess.Popen(
            list(cmd), env=None if env is None else dict(env), start_new_session=True
        )
        self._forward()  # a signal that came while it was starting
        while True:
            try:
                return self._child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.signum is not None and time.monotonic() > self._signalled_at + self.grace_s:
                logger.error("torchrun did not stop within %.0f s of the signal: killing it", self.grace_s)
                _kill_with_children(self._child)
                return self._child.wait()


def _kill_with_children(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `proc` and its direct children (torchrun's workers, each in a session of its own, would
    outlive it otherwise); the children are read from /proc (Linux), best effort elsewhere."""
    children: list[int] = []
    for task in Path(f"/proc/{proc.pid}/task").glob("*"):
        try:
            children += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    proc.kill()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class _Location:
    """A run or data folder that is either an `s3://` prefix or a local directory."""

    def __init__(self, uri: str, store: ObjectStore | None) -> None:
        self.uri = uri.rstrip("/")
        self.store = store

    def child(self, name: str) -> _Location:
        return _Location(f"{self.uri}/{name}", self.store)

    def fetch(self, dest: Path, required: bool) -> bool:
        """Copy this folder into `dest`; False when it does not exist (and is not required)."""
        if self.store is not None:
            if not self.store.is_published(self.uri):
                if required:
                    raise FileNotFoundError(f"{self.uri} is not a published folder (no _SUCCESS marker)")
                return False
            self.store.sync_to_local(self.uri, dest)
            return True
        src = Path(self.uri)
        if not src.is_dir():
            if required:
                raise FileNotFoundError(f"data folder {src} does not exist")
            return False
        if src.resolve() != dest.resolve():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        return True

    def publish(self, src: Path, replace: bool = False) -> None:
        """Upload `src` here. `replace`: through `ObjectStore.replace_folder`, so a reader finds the previous
        or the new set whole whenever the upload is cut (the checkpoints a restarted node resumes from)."""
        if self.store is not None:
            if replace:
                self.store.replace_folder(src, self.uri)
            else:
                self.store.upload_folder(src, self.uri)
            return
        dest = Path(self.uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)


def _stage_checkpoints(ckpt_dir: Path, staging: Path) -> bool:
    """Hard-link finished checkpoints (not temp files) into `staging`; True when there is any."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    found = False
    for path in sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            os.link(path, staging / path.name)
        except OSError:
            shutil.copy2(path, staging / path.name)
        found = True
    return found


class ResumeError(RuntimeError):
    """Every complete checkpoint set in the run folder failed verification: nothing safe to resume from."""


RESUME_ROUNDS = 3
RESUME_RETRY_S = 2.0
"""A node that finds no set passing verification lists the sets again this many times, this far apart: node
rank 0's mirror may replace them while a replaced worker node reads them."""


def resume_checkpoints(source: _Location, dest: Path) -> str | None:
    """Put the newest whole, verified checkpoint set of `source` (the run's checkpoints/) into `dest`, where
    the trainer auto-resumes from; returns the prefix it came from, None for a fresh start.

    In S3 the sets are those `ObjectStore.replace_folder` leaves (`ObjectStore.complete_versions`): the
    folder's, or its `.incoming` sibling's when the mirror was killed while moving a new set in. Each file
    is checked against its set's marker in a folder of its own and moved into `dest` only when the whole set
    passed; a set that fails is logged and the previous one tried; when none passes, the sets are listed
    again (`RESUME_ROUNDS`). Objects without a marker are never used.

    Raises:
        ResumeError: there are complete sets but none passed verification (training does not start over
            silently on top of them).
    """
    if source.store is None:
        if source.fetch(dest, required=False):
            logger.info("resuming from the checkpoints in %s", source.uri)
            return source.uri
        logger.info("no checkpoints in %s: training starts from the initial weights", source.uri)
        return None
    store = source.store
    failed: list[str] = []
    for attempt in range(RESUME_ROUNDS):
        versions = store.complete_versions(source.uri)
        if not versions and attempt == 0:
            _log_fresh_start(store, source.uri)
            return None
        errors_before = len(failed)
        for version in versions:
            if _fetch_whole(store, version, dest, failed):
                logger.info(
                    "resuming from %s, %s%s; every file matches its marker: %s",
                    version.uri,
                    version.reason,
                    " (the newer set failed verification)" if len(failed) > errors_before else "",
                    version.describe(),
                )
                return version.uri
        if attempt + 1 < RESUME_ROUNDS:
            logger.warning(
                "no checkpoint set under %s passed verification; listing them again in %.0f s (node rank 0's "
                "mirror may have replaced them while they were read)",
                source.uri,
                RESUME_RETRY_S,
            )
            time.sleep(RESUME_RETRY_S)
    raise ResumeError(
        f"no checkpoint set under {source.uri} passed verification ({'; '.join(failed) or 'none left'}). "
        "Training does not start over on top of them: restore the objects, or delete the prefix to train "
        "from the initial weights."
    )


def _log_fresh_start(store: ObjectStore, uri: str) -> None:
    unmarked = store.list_objects(uri)
    if unmarked:
        logger.warning(
            "%s holds %d object(s) but no complete checkpoint set (no %s marker: an upload cut short by an "
            "older version of this node); they are not verified as a set and not used: training starts "
            "from the initial weights",
            uri,
            len(unmarked),
            MARKER_NAME,
        )
    else:
        logger.info("no checkpoint published under %s: training starts from the initial weights", uri)


def _fetch_whole(store: ObjectStore, version: FolderVersion, dest: Path, failed: list[str]) -> bool:
    """Download `version` into a landing folder beside `dest` and move it into `dest` once every file
    passed; False (the reason appended to `failed`, `dest` untouched) when one did not."""
    landing = dest.parent / f".{dest.name}.resume"
    shutil.rmtree(landing, ignore_errors=True)
    try:
        store.fetch_version(version, landing)
    except (StorageIntegrityError, StorageNotFoundError) as exc:
        logger.error("cannot resume from %s (%s): %s", version.uri, version.reason, exc)
        failed.append(f"{version.uri}: {exc}")
        shutil.rmtree(landing, ignore_errors=True)
        return False
    dest.mkdir(parents=True, exist_ok=True)
    dest.joinpath(MARKER_NAME).unlink(missing_ok=True)
    for rel in sorted(version.marker["files"]):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(landing / rel, dest / rel)
    os.replace(landing / MARKER_NAME, dest / MARKER_NAME)
    shutil.rmtree(landing, ignore_errors=True)
    return True


class _CheckpointMirror(threading.Thread):
    """Publishes the checkpoint folder every `interval_s` while training runs (node rank 0 only)."""

    def __init__(self, ckpt_dir: Path, target: _Location, interval_s: float, staging: Path) -> None:
        super().__init__(name="checkpoint-mirror", daemon=True)
        self.ckpt_dir, self.target, self.interval_s, self.staging = ckpt_dir, target, interval_s, staging
        self.stop_event = threading.Event()
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # the final sync waits for an upload the thread is doing

    def sync_once(self) -> list[str]:
        """Publish the checkpoints when they changed since the last publish; the names published."""
        with self._lock:
            current = (
                {p.name: p.stat().st_mtime for p in self.ckpt_dir.glob("*.pt")}
                if self.ckpt_dir.is_dir()
                else {}
            )
            if not current or current == self._last:
                return []
            if _stage_checkpoints(self.ckpt_dir, self.staging):
                self.target.publish(self.staging, replace=True)
                self._last = current
                return sorted(current)
            return []

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                self.sync_once()
            except Exception as exc:  # noqa: BLE001 - a failed mirror must not kill training; retried
                logger.warning("checkpoint mirror to %s failed (%s); retrying later", self.target.uri, exc)


def _stage_train_data(
    dataset_uri: str,
    train_list: str,
    scratch_dir: Path,
    store: ObjectStore | None,
    topology: NodeTopology,
    env: dict[str, str] | None,
) -> Path:
    """Put the train list at `scratch_dir`/train_list.txt and the train videos in the data folder it
    returns: `scratch_dir`/data, or the shared volume's copy of this data set version. `store`: set
    whenever a URI is `s3://`."""
    file_list = scratch_dir / "train_list.txt"
    remote_data = is_s3_uri(dataset_uri)
    if is_s3_uri(train_list) or remote_data:
        assert store is not None
        list_uri = train_list if is_s3_uri(train_list) else f"{dataset_uri.rstrip('/')}/{train_list}"
        try:
            store.download_file(list_uri, file_list)
        except StorageNotFoundError:
            raise FileNotFoundError(
                f"training video list {list_uri} does not exist; run the split step first "
                "(python -m sam2.tools.split_dataset) or pass --train-list"
            ) from None
    if not remote_data:  # a local data set folder: copied whole, as before
        data_dir = scratch_dir / "data"
        logger.info("node %d/%d: copying data set %s", topology.node_rank, topology.num_nodes, dataset_uri)
        _Location(dataset_uri, None).fetch(data_dir, required=True)
        if not is_s3_uri(train_list):
            src = Path(train_list) if Path(train_list).is_absolute() else data_dir / train_list
            if not src.is_file():
                raise FileNotFoundError(
                    f"training video list {src} does not exist; run the split step first "
                    f"(python -m sam2.tools.split_dataset) or pass --train-list"
                )
            shutil.copyfile(src, file_list)
        return data_dir
    data_dir = dataset_dir(dataset_uri, scratch_dir, env or None)  # the shared volume's copy, if mounted
    videos = [line.strip() for line in file_list.read_text().splitlines() if line.strip()]
    if not videos:
        raise ValueError(f"training video list {train_list} is empty")
    logger.info(
        "node %d/%d: staging %d train videos of %s into %s",
        topology.node_rank,
        topology.num_nodes,
        len(videos),
        dataset_uri,
        data_dir,
    )
    stage_videos(store, dataset_uri, data_dir, videos)
    return data_dir


def _publish_outputs(mirror: _CheckpointMirror, exp_dir: Path, run: _Location, signum: int | None) -> None:
    """Node rank 0's last upload: the newest checkpoints (the mirror's path), then the TensorBoard logs."""
    mirror.stop_event.set()
    mirror.join(timeout=5)
    started = time.monotonic()
    logger.info("publishing the final checkpoints to %s", mirror.target.uri)
    if signum is not None:
        logger.warning(
            "after %s: uploading the newest checkpoints to %s", signal.Signals(signum).name, mirror.target.uri
        )
    published = mirror.sync_once()
    if signum is not None:
        logger.warning(
            "after %s: uploaded %s to %s in %.1f s",
            signal.Signals(signum).name,
            ", ".join(published) or "no new checkpoint (the mirror had the newest already)",
            mirror.target.uri,
            time.monotonic() - started,
        )
    if (exp_dir / TENSORBOARD).is_dir():
        run.child(TENSORBOARD).publish(exp_dir / TENSORBOARD)
    logger.info("published checkpoints and logs under %s", run.uri)


def run_node(
    config: str,
    dataset_uri: str,
    run_uri: str,
    scratch_dir: Path,
    train_list: str,
    overrides: Sequence[str] = (),
    init_checkpoint_uri: str | None = None,
    mirror_interval_s: float = 300.0,
    topology: NodeTopology | None = None,
    env: dict[str, str] | None = None,
    stop: GracefulStop | None = None,
) -> Path:
    """Run this node's share of the training; returns the local experiment folder.

    `stop`: the signal handling `main` installed (default: none installed, torchrun runs to its end).
    Raises FileNotFoundError for missing inputs, subprocess.CalledProcessError when training fails, and
    NodeStopped after a signal stopped it (node rank 0 has uploaded the newest checkpoint by then).
    """
    stop = stop or GracefulStop()
    refuse_in_training_validation(overrides)
    topology = topology or NodeTopology.from_env(env)
    needs_s3 = any(is_s3_uri(u) for u in (dataset_uri, run_uri, train_list, init_checkpoint_uri or ""))
    store = ObjectStore() if needs_s3 else None
    scratch_dir.mkdir(parents=True, exist_ok=True)
    exp_dir = scratch_dir / "experiment"
    run = _Location(run_uri, store if is_s3_uri(run_uri) else None)

    data_dir = _stage_train_data(dataset_uri, train_list, scratch_dir, store, topology, env)
    file_list = scratch_dir / "train_list.txt"
    resume_checkpoints(run.child(CHECKPOINTS), exp_dir / CHECKPOINTS)

    all_overrides = [
        f"launcher.experiment_log_dir={exp_dir}",
        *dataset_overrides(data_dir, file_list),
    ]
    if init_checkpoint_uri:
        init_path = scratch_dir / "init" / Path(init_checkpoint_uri).name
        if is_s3_uri(init_checkpoint_uri):
            assert store is not None
            store.download_file(init_checkpoint_uri, init_path)
        elif not Path(init_checkpoint_uri).is_file():
            raise FileNotFoundError(f"initial checkpoint {init_checkpoint_uri} does not exist")
        else:
            init_path = Path(init_checkpoint_uri)
        all_overrides.append(f"{INIT_CHECKPOINT_OVERRIDE}={init_path}")
    all_overrides.extend(overrides)

    mirror = None
    if topology.node_rank == 0:
        mirror = _CheckpointMirror(
            exp_dir / CHECKPOINTS, run.child(CHECKPOINTS), mirror_interval_s, scratch_dir / ".ckpt-staging"
        )
        mirror.start()
    cmd = torchrun_command(config, topology, all_overrides)
    logger.info("node %d: %s", topology.node_rank, redact_command(cmd))
    try:
        returncode = stop.run_torchrun(cmd, None if env is None else {**os.environ, **env})
    finally:
        # Publish even after a failure or a stop: the restarted pod resumes from what was saved.
        if mirror is not None:
            try:
                _publish_outputs(mirror, exp_dir, run, stop.signum)
            except Exception as exc:
                if stop.signum is None:
                    raise
                # Still a retryable stop: the restarted node resumes from the last checkpoint mirrored.
                logger.error("the upload after %s failed: %s", signal.Signals(stop.signum).name, exc)
    if stop.signum is not None:
        raise NodeStopped(stop.signum)
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, cmd)
    return exp_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config, e.g. configs/sam2.1_training/...")
    parser.add_argument("--dataset-uri", required=True, help="published data set folder (s3:// or local)")
    parser.add_argument("--run-uri", required=True, help="run folder for checkpoints/ and tensorboard/")
    parser.add_argument(
        "--train-list", default="splits/train.txt", help="video list, relative to the data set"
    )
    parser.add_argument("--scratch-dir", default=os.environ.get("SAM2_SCRATCH", "/scratch"))
    parser.add_argument("--init-checkpoint-uri", default=None, help="weights to start from (s3:// or path)")
    parser.add_argument("--mirror-interval-s", type=float, default=300.0, help="checkpoint upload period")
    parser.add_argument(
        "--stop-grace-s",
        type=float,
        default=DEFAULT_STOP_GRACE_S,
        help="after SIGTERM/SIGINT, how long torchrun may take to stop before the checkpoint upload",
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks (also SAM2_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.environ.get(TORCHRUN_ERROR_FILE):  # an earlier run's error must not decide this one's exit code
        Path(os.environ[TORCHRUN_ERROR_FILE]).unlink(missing_ok=True)
    stop = GracefulStop(args.stop_grace_s)
    if threading.current_thread() is threading.main_thread():
        stop.install()
    try:
        if stop.installed:
            # The job ends when its pipeline step does; a no-op without SAM2_OWNER_POD_*.
            start_owner_watch(stop)
        run_node(
            args.config,
            args.dataset_uri,
            args.run_uri,
            Path(args.scratch_dir),
            args.train_list,
            args.overrides,
            args.init_checkpoint_uri,
            args.mirror_interval_s,
            stop=stop,
        )
    except NodeStopped as exc:
        if stop.final_exit_code is not None:
            logger.warning(
                "training %s: exiting %d for good (its pipeline step is over)", exc, stop.final_exit_code
            )
            return stop.final_exit_code
        logger.warning("training %s: exiting %d, retried under restartPolicy ExitCode", exc, exc.exit_code)
        return exc.exit_code
    except subprocess.CalledProcessError as exc:
        logger.error("training exited with status %d", exc.returncode)
        return exit_code_for_torchrun_failure(exc.returncode)
    # Anything else is one line with its exit code (sam2.utils.cli_errors): 2 for bad input or settings
    # (permanent), 201 for a service unreachable for the whole retry budget (retryable: >= 128).
    except Exception as exc:
        code = report_failure(exc, args.debug or debug_enabled(), prog="training_node", emit=logger.error)
        if code == EXIT_UNREACHABLE:
            logger.error(
                "exiting %d (retryable under restartPolicy ExitCode): the replaced pod resumes from the "
                "checkpoints published last",
                code,
            )
        return code
    finally:
        if stop.signum is None:  # after a signal the handlers stay: a second one must not kill the exit
            stop.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
