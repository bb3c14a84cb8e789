"""Bytes each pipeline step moves to and from object storage, before and after selective staging; and the
wall time of sharded inference.

A synthetic data set of ``--videos`` short videos (the demo generator, ``--frames`` frames each) is
extracted and published to a private SeaweedFS server, then the data steps run as the pipeline runs them
(each step's component function in its own process, fresh scratch): extract, validate, split, the start
of a 2-node training (each node's ``run_node`` up to the point where torchrun would start: the staging
of its data), infer and evaluate. Every step runs twice: on this tree ("after") and on ``--before``
(a ``git worktree`` of the code before the change, e.g. ``git worktree add --detach /tmp/before
3191d9e``), each against its own bucket. Bytes are counted in each step's process at the S3 client
(every object body fetched with ``Minio.get_object`` and sent with ``put_object``, which ``fput_object``
calls), so
the old code, which has no counters, is measured the same way; for "after" the storage layer's own
counters (``ObjectStore.counters``) are summed too and must agree. In infer the model is replaced by a
copy of the ground truth masks (this part measures data movement, not the model); the shard timing below
runs the real model.

Shard scaling: the real ``vos_inference`` (SAM 2.1 tiny, random weights, the demo's 160x128 frames at
model input size 128, as the demo preset infers) over ``--shard_videos`` videos as 1, 2 and 4 concurrent
shard processes (as the ParallelFor's pods would run, each on its round-robin share of the videos),
against one process on all of them. On a machine with fewer cores than shards the shards share them.

    .venv/bin/python benchmarks/data_movement.py --before /tmp/before [--videos 1000] [--frames 3]

Peak disk: while each step runs, its work folder (scratch, TMPDIR, outputs) is measured every 0.2 s and
the largest size printed per step and tree: the ephemeral storage its pod must have. With
``--source_archive`` extract reads a .tar.gz of the source from S3, as a real data set arrives.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
STEPS = ("extract", "validate", "split", "train start (2 nodes)", "infer", "merge", "evaluate")


# ---- the probe: one step in one process, bytes counted at the S3 client ------------------------


def _install_counting() -> dict[str, int]:
    """Count the object bodies this process moves through minio (old and new code alike)."""
    import minio

    counts = {"bytes_down": 0, "objects_down": 0, "bytes_up": 0, "objects_up": 0}
    lock = threading.Lock()
    get, put = minio.Minio.get_object, minio.Minio.put_object

    def add(kind: str, size: int) -> None:
        with lock:
            counts[f"bytes_{kind}"] += size
            counts[f"objects_{kind}"] += 1

    def get_object(self, *args, **kwargs):
        response = get(self, *args, **kwargs)
        add("down", int(response.headers.get("content-length") or 0))
        return response

    def put_object(self, bucket, name, data, length, *args, **kwargs):  # fput_object calls it too
        result = put(self, bucket, name, data, length, *args, **kwargs)
        add("up", int(length))
        return result

    minio.Minio.get_object, minio.Minio.put_object = get_object, put_object
    return counts


def _register_stores() -> list:
    """Keep every ObjectStore this process makes, to read their counters at the end."""
    from sam2.storage import ObjectStore

    made: list = []
    init = ObjectStore.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    ObjectStore.__init__ = __init__
    return made


def _store_counters(stores: list) -> dict[str, int] | None:
    """Sum of the ObjectStores' own counters (None where the code has none)."""
    if not stores or not hasattr(stores[0], "counters"):
        return None
    total: dict[str, int] = {}
    for store in stores:
        for key, value in store.counters.snapshot().items():
            total[key] = total.get(key, 0) + value
    return total


def _call(func, **kwargs):
    """Call a component's python function with the arguments its signature (old or new) takes."""
    accepted = inspect.signature(func).parameters
    return func(**{k: v for k, v in kwargs.items() if k in accepted})


def _fake_inference(real_run):
    """subprocess.run that answers vos_inference by copying each listed video's masks as predictions."""

    def run(cmd, *args, **kwargs):
        if isinstance(cmd, list) and "sam2.tools.vos_inference" in cmd:
            flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if str(cmd[i]).startswith("--")}
            videos = Path(flag["--video_list_file"]).read_text().split()
            for video in videos:
                shutil.copytree(
                    Path(flag["--input_mask_dir"]) / video,
                    Path(flag["--output_mask_dir"]) / video,
                    dirs_exist_ok=True,
                )
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, *args, **kwargs)

    return run


def probe(tree: str, step: str, spec_path: str) -> None:
    sys.path.insert(0, tree)
    os.chdir(tree)
    counts = _install_counting()
    stores = _register_stores()
    from kfp import dsl

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    outputs: dict[str, dict] = {}
    (work / "outputs").mkdir(parents=True, exist_ok=True)

    def output(name: str, kind=dsl.Dataset):
        art = kind(name=name, uri=str(work / "outputs" / name), metadata={})
        outputs[name] = art.metadata
        return art

    def given(name: str, kind=dsl.Dataset):
        return kind(name=name, uri="unused", metadata=spec["inputs"].get(name, {}))

    if step == "extract":
        from components.extract_frames import extract_frames

        _call(
            extract_frames.python_func,
            source_uri=spec["source"],
            dataset_name="bench",
            data_bucket=spec["bucket"],
            frames=output("frames"),
        )
    elif step == "validate":
        from components.validate import validate_dataset

        frames = given("frames")
        _call(
            validate_dataset.python_func,
            frames=frames,
            dataset_name="bench",
            data_bucket=spec["bucket"],
            dataset_version=frames.metadata["version"],
            validated=output("validated"),
            report=output("report", dsl.Markdown),
            num_frames=2,
        )
    elif step == "split":
        from components.split import split_dataset

        validated = given("validated")
        _call(
            split_dataset.python_func,
            validated=validated,
            dataset_version=validated.metadata["version"],
            splits=output("splits"),
            val_fraction=spec["val_fraction"],
        )
    elif step == "train":
        import sam2.launch.training_node as node

        node.subprocess.run = lambda *a, **k: subprocess.CompletedProcess(
            a[0], 0
        )  # stop where torchrun starts
        if hasattr(node, "GracefulStop"):  # trees since the SIGTERM handling start torchrun through it
            node.GracefulStop.run_torchrun = lambda self, cmd, env: 0
        splits = spec["inputs"]["splits"]
        from sam2.launch.training_node import NodeTopology, run_node

        for rank in range(2):
            run_node(
                "unused-config.yaml",
                splits["uri"],
                f"s3://{spec['bucket']}/runs/bench",
                work / f"node{rank}",
                splits["train_list_uri"],
                topology=NodeTopology(2, rank, 1),
                mirror_interval_s=3600,
            )
    elif step == "infer":
        from components.infer import infer_videos

        subprocess.run = _fake_inference(subprocess.run)
        _call(
            infer_videos.python_func,
            model=given("model", dsl.Model),
            splits=given("splits"),
            references=given("references"),
            predictions=output("predictions"),
        )
    elif step == "merge":
        from components.merge_predictions import merge_predictions

        shard = given("predictions")
        _call(
            merge_predictions.python_func,
            shards=[shard],
            splits=given("splits"),
            predictions=output("merged"),
        )
    elif step == "evaluate":
        from components.evaluate import evaluate_predictions

        _call(
            evaluate_predictions.python_func,
            predictions=given("predictions"),
            splits=given("splits"),
            model=given("model", dsl.Model),
            metrics=output("metrics", dsl.Metrics),
            report=output("report", dsl.Markdown),
            comparison=output("comparison"),
        )
    else:
        raise SystemExit(f"unknown step {step!r}")
    import sam2

    print(
        "PROBE-RESULT "
        + json.dumps(
            {
                "counts": counts,
                "store_counters": _store_counters(stores),
                "outputs": outputs,
                "sam2": sam2.__file__,
            }
        )
    )


# ---- peak disk of a step -----------------------------------------------------------------------


def disk_usage(roots: list[Path]) -> int:
    """Bytes on disk (allocated blocks) under `roots`; files that vanish while walking are skipped."""
    total = 0
    stack = [str(r) for r in roots]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class DiskPeak:
    """The largest `disk_usage(roots)` seen while the block runs, sampled every `interval_s`: what a step's
    pod holds at once in its scratch, temporary files and outputs (its ephemeral storage)."""

    def __init__(self, roots: list[Path], interval_s: float = 0.2) -> None:
        self.roots, self.interval_s, self.peak = roots, interval_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, disk_usage(self.roots))
            if self._done.wait(self.interval_s):
                self.peak = max(self.peak, disk_usage(self.roots))
                return

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def print_disk_table(measured: dict[str, dict]) -> None:
    """Peak disk per step (MB) of each tree: its scratch, temporary files and outputs at once."""
    labels = list(measured)
    print("\npeak disk per step (MB): scratch + temporary files + outputs, sampled every 0.2 s")
    print(f"{'step':<24}" + "".join(f"{label:>12}" for label in labels))
    for step in STEPS:
        if not any(step in measured[label] for label in labels):
            continue
        row = "".join(
            f"{measured[label][step]['disk_peak'] / 1e6:>12.1f}" if step in measured[label] else f"{'-':>12}"
            for label in labels
        )
        print(f"{step:<24}{row}")


# ---- the driver ----------------------------------------------------------------------------


def run_probe(tree: Path, step: str, spec: dict, env: dict[str, str], log: Path) -> dict:
    spec_path = Path(spec["work"]) / f"spec-{step}.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    scratch, tmp = Path(spec["work"]) / f"scratch-{step}", Path(spec["work"]) / f"tmp-{step}"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**env, "SAM2_SCRATCH": str(scratch), "TMPDIR": str(tmp), "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    with DiskPeak([Path(spec["work"])]) as disk:
        proc = subprocess.run(
            [sys.executable, str(HERE), "--probe", str(tree), step, str(spec_path)],
            env=env,
            capture_output=True,
            text=True,
        )
    seconds = time.perf_counter() - start
    with open(log, "a") as handle:
        handle.write(
            f"==== {tree} {step} (exit {proc.returncode}, {seconds:.1f}s)\n{proc.stdout}\n{proc.stderr}\n"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"step {step} on {tree} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-3000:]}"
        )
    result = json.loads(lines[-1][len("PROBE-RESULT ") :])
    if not result["sam2"].startswith(str(tree)):
        raise SystemExit(f"step {step} imported sam2 from {result['sam2']}, not from {tree}")
    result["seconds"] = seconds
    result["disk_peak"] = disk.peak
    return result


def measure_tree(
    tree: Path, bucket: str, source: Path, work: Path, env: dict[str, str], log: Path, args
) -> dict:
    """Run every data step of `tree` in order; returns {step: probe result}."""
    from sam2.storage import ObjectStore, S3Settings

    store = ObjectStore(S3Settings.from_env(env))
    store.ensure_bucket(bucket)
    ckpt = f"s3://{bucket}/models/checkpoint.pt"
    store.write_bytes(ckpt, os.urandom(args.checkpoint_kb * 1024))  # inference is faked: any bytes do
    if source.is_file():  # an archive: extract downloads it from S3, as from a real data bucket
        source_uri = f"s3://{bucket}/sources/{source.name}"
        store.upload_file(source, source_uri)
    else:
        source_uri = str(source)
    base = {"bucket": bucket, "source": source_uri, "val_fraction": args.val_fraction}
    results: dict[str, dict] = {}

    def step(name: str, probe_step: str, inputs: dict) -> dict:
        spec = {**base, "work": str(work / probe_step), "inputs": inputs}
        results[name] = run_probe(tree, probe_step, spec, env, log)
        print(f"  {tree.name or tree}: {name} done in {results[name]['seconds']:.1f}s", flush=True)
        return results[name]["outputs"]

    frames = step("extract", "extract", {})["frames"]
    validated = step("validate", "validate", {"frames": frames})["validated"]
    splits = step("split", "split", {"validated": validated})["splits"]
    step("train start (2 nodes)", "train", {"splits": splits})
    model = {
        "uri": ckpt,
        "run_uri": f"s3://{bucket}/runs/bench",
        "model_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "dataset_version": splits["version"],
    }
    predictions = step("infer", "infer", {"model": model, "splits": splits, "references": {"models": []}})[
        "predictions"
    ]
    if (tree / "components" / "merge_predictions.py").is_file():  # sharded infer: one shard, then the merge
        predictions = step("merge", "merge", {"splits": splits, "predictions": predictions})["merged"]
    step("evaluate", "evaluate", {"model": model, "splits": splits, "predictions": predictions})
    results["_splits"] = splits
    return results


def _mb(num: int) -> str:
    return f"{num / 1e6:9.2f}"


def _ratio(before: int, after: int) -> str:
    if before == 0:
        return "    -"  # nothing to compare with (e.g. the merge step is new)
    if after == 0:
        return "  inf"
    return f"{before / after:5.1f}x"


def print_bytes_table(before: dict, after: dict) -> None:
    print()
    print(
        "| step | before down MB | after down MB | down ratio | before up MB | after up MB | up ratio |"
        " after objects down |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = [0, 0, 0, 0]
    none = {"counts": {"bytes_down": 0, "objects_down": 0, "bytes_up": 0, "objects_up": 0}}
    for name in STEPS:
        if name not in before and name not in after:
            continue
        b, a = before.get(name, none)["counts"], after.get(name, none)["counts"]
        totals = [
            t + v
            for t, v in zip(
                totals, (b["bytes_down"], a["bytes_down"], b["bytes_up"], a["bytes_up"]), strict=True
            )
        ]
        print(
            f"| {name} | {_mb(b['bytes_down'])} | {_mb(a['bytes_down'])} | {_ratio(b['bytes_down'], a['bytes_down'])} |"
            f" {_mb(b['bytes_up'])} | {_mb(a['bytes_up'])} | {_ratio(b['bytes_up'], a['bytes_up'])} |"
            f" {a['objects_down']} |"
        )
    print(
        f"| all steps | {_mb(totals[0])} | {_mb(totals[1])} | {_ratio(totals[0], totals[1])} |"
        f" {_mb(totals[2])} | {_mb(totals[3])} | {_ratio(totals[2], totals[3])} | |"
    )


def check_counters_agree(after: dict) -> list[str]:
    """The storage layer's counters against the client-level count, per step ("after" only)."""
    notes = []
    for name in (step for step in STEPS if step in after):
        own, client = after[name]["store_counters"], after[name]["counts"]
        if own is None:
            notes.append(f"{name}: no ObjectStore counters")
            continue
        if (own["bytes_downloaded"], own["bytes_uploaded"]) != (client["bytes_down"], client["bytes_up"]):
            notes.append(
                f"{name}: ObjectStore counters {own['bytes_downloaded']}/{own['bytes_uploaded']} B down/up vs "
                f"client {client['bytes_down']}/{client['bytes_up']} B"
            )
    return notes


# ---- shard scaling ---------------------------------------------------------------------------


def shard_scaling(
    data: Path, videos: list[str], work: Path, shard_counts: list[int], threads: int, image_size: int
) -> None:
    """Wall time of vos_inference over `videos` as N concurrent shard processes."""
    import torch

    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "tiny.pt"
    torch.save(
        {"model": build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu").state_dict()}, ckpt
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}

    def run(shards: int) -> float:
        out = work / f"pred-{shards}"
        shutil.rmtree(out, ignore_errors=True)
        procs = []
        start = time.perf_counter()
        for index in range(shards):
            listing = work / f"list-{shards}-{index}.txt"
            listing.write_text("".join(f"{v}\n" for v in videos[index::shards]))
            cmd = [
                sys.executable, "-m", "sam2.tools.vos_inference",
                "--sam2_cfg", "configs/sam2.1/sam2.1_hiera_t.yaml", "--sam2_checkpoint", str(ckpt),
                "--base_video_dir", str(data / "JPEGImages"), "--input_mask_dir", str(data / "Annotations"),
                "--video_list_file", str(listing), "--output_mask_dir", str(out), "--device", "cpu",
                "--hydra_overrides", f"++model.image_size={image_size}",
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            )
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"vos_inference shard failed:\n{err[-2000:]}")
        seconds = time.perf_counter() - start
        written = sorted(p.name for p in out.iterdir() if p.is_dir())
        if written != sorted(videos):
            raise SystemExit(f"{shards} shards wrote {len(written)} of {len(videos)} videos")
        return seconds

    reference = run(1)
    print()
    print(
        f"| shards (concurrent processes, {threads} thread(s) each) | videos | wall s | speed-up vs one process |"
    )
    print("| ---: | ---: | ---: | ---: |")
    print(f"| 1 (one process, the reference) | {len(videos)} | {reference:.1f} | 1.00x |")
    for shards in shard_counts:
        if shards == 1:
            seconds = run(1)
            label = "1 (again)"
        else:
            seconds = run(shards)
            label = str(shards)
        print(f"| {label} | {len(videos)} | {seconds:.1f} | {reference / seconds:.2f}x |")


def measure_bytes(args, work: Path, log: Path) -> None:
    """The bytes table: every data step of both trees against a private SeaweedFS server."""
    from sam2.data.demo import generate_demo_dataset
    from sam2.tools.s3_server import SeaweedS3Server
    from sam2.utils.network import free_port

    server = SeaweedS3Server(data_dir=work / "seaweedfs", access_key="BENCH" + os.urandom(4).hex().upper(),
                             secret_key=os.urandom(18).hex(), s3_port=free_port())  # fmt: skip
    server.start(timeout_s=90)
    try:
        env = {**os.environ, **server.env(), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        source = generate_demo_dataset(work / "source", num_videos=args.videos, num_frames=args.frames)
        files = [p for p in source.rglob("*") if p.is_file()]
        print(
            f"synthetic data set: {args.videos} videos x {args.frames} frames, {len(files)} files, "
            f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB ({time.perf_counter() - t0:.0f}s to make)",
            flush=True,
        )
        if args.source_archive:
            import tarfile

            archive = work / "source.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(source, arcname="bench")
            print(f"source archive: {archive.stat().st_size / 1e6:.1f} MB (extract downloads it from S3)")
            source = archive
        trees = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
        measured = {}
        for label, tree in trees:
            print(f"{label}: {tree}", flush=True)
            measured[label] = measure_tree(tree, f"bench-{label}", source, work / label, env, log, args)
        if "before" in measured:
            print_bytes_table(measured["before"], measured["after"])
        print_disk_table(measured)
        for note in check_counters_agree(measured["after"]):
            print(f"note: {note}")
        if not check_counters_agree(measured["after"]):
            print("ObjectStore counters equal the client-level count in every step (after).")
        print(f"(per-step logs: {log})")
    finally:
        server.stop(grace_s=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a worktree of the code before the change")
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument(
        "--checkpoint_kb",
        type=int,
        default=1,
        help="size of the stand-in checkpoint infer downloads (both trees)",
    )
    parser.add_argument("--shards", default="1,2,4", help="shard counts to time (empty: skip)")
    parser.add_argument("--shard_videos", type=int, default=8, help="val videos the shard timing runs on")
    parser.add_argument("--shard_frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per shard process")
    parser.add_argument("--image_size", type=int, default=128, help="model input size of the shard timing")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--no_bytes", action="store_true", help="skip the bytes part (shard timing only)")
    parser.add_argument(
        "--source_archive",
        action="store_true",
        help="extract from a .tar.gz of the source in S3 (as a real data set arrives) instead of a folder",
    )
    args = parser.parse_args(argv)
    if args.frames < 3:
        parser.error("--frames must be >= 3: evaluation skips the first and the last frame")

    from sam2.data.demo import generate_demo_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="sam2-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "probes.log"
    if not args.no_bytes:
        measure_bytes(args, work, log)

    counts = [int(s) for s in args.shards.split(",") if s.strip()]
    if counts:
        shard_data = generate_demo_dataset(
            work / "shard-data", num_videos=args.shard_videos, num_frames=args.shard_frames
        )
        names = sorted(p.name for p in (shard_data / "JPEGImages").iterdir())
        shard_scaling(shard_data, names, work / "shards", counts, args.threads, args.image_size)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe(*sys.argv[2:5])
    else:
        sys.exit(main())
