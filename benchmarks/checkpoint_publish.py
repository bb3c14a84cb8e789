"""What the kill-safe checkpoint mirror costs: one mirror of a changed checkpoint with
``ObjectStore.replace_folder`` (upload under ``checkpoints.incoming/``, then a server-side copy into
``checkpoints/``) against the old ``ObjectStore.upload_folder`` (unmark, upload in place, mark), measured in
the same run on a private SeaweedFS server.

For each ``--sizes_mb`` the run folder holds a checkpoint.pt of that size and a kept epoch checkpoint of
``--kept_mb`` that does not change; each repeat writes new bytes into checkpoint.pt and mirrors it with
both methods, each to its own prefix (published once before). The table gives the median seconds of
``--repeats`` mirrors, their ratio, and the part of replace_folder spent moving the new set in (the
copies, their check, the markers, deleting the incoming prefix). On a cluster the upload crosses the
network and the copy stays inside the storage service, so the ratio here (loopback, a shared disk) is an
upper bound of the share the move-in takes.

    .venv/bin/python benchmarks/checkpoint_publish.py [--sizes_mb 16 128 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2.storage import ObjectStore, S3Settings  # noqa: E402
from sam2.tools.s3_server import SeaweedS3Server  # noqa: E402
from sam2.utils.network import free_port  # noqa: E402


def _write(path: Path, megabytes: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(int(megabytes * 1e6)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes_mb", type=float, nargs="+", default=[16, 128, 512])
    parser.add_argument("--kept_mb", type=float, default=16, help="an epoch checkpoint that does not change")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ckpt-publish-") as tmp:
        work = Path(tmp)
        server = SeaweedS3Server(data_dir=work / "seaweedfs", access_key="BENCH" + os.urandom(4).hex().upper(),
                                 secret_key=os.urandom(18).hex(), s3_port=free_port())  # fmt: skip
        server.start(timeout_s=90)
        try:
            store = ObjectStore(S3Settings(server.endpoint_url, server.access_key, server.secret_key))
            move_in = store._move_in
            moving: list[float] = []

            def timed_move_in(*a, **kw) -> None:
                started = time.perf_counter()
                move_in(*a, **kw)
                moving.append(time.perf_counter() - started)

            store._move_in = timed_move_in  # type: ignore[method-assign]
            print(f"SeaweedFS on loopback; median of {args.repeats} mirrors; a kept {args.kept_mb:g} MB file")
            print()
            print("| checkpoint.pt | upload_folder s | replace_folder s | ratio | of which moving in s |")
            print("| --- | --- | --- | --- | --- |")
            for size in args.sizes_mb:
                folder = work / f"ckpt-{size:g}"
                _write(folder / "checkpoint_1.pt", args.kept_mb)
                _write(folder / "checkpoint.pt", size)
                bucket = f"bench-{int(size)}-{os.urandom(3).hex()}"
                old_uri, new_uri = f"s3://{bucket}/old/checkpoints", f"s3://{bucket}/new/checkpoints"
                store.upload_folder(folder, old_uri)
                store.replace_folder(folder, new_uri)
                old_s, new_s = [], []
                moving.clear()
                for _ in range(args.repeats):
                    _write(folder / "checkpoint.pt", size)
                    started = time.perf_counter()
                    store.upload_folder(folder, old_uri)
                    old_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    store.replace_folder(folder, new_uri)
                    new_s.append(time.perf_counter() - started)
                old_m, new_m = statistics.median(old_s), statistics.median(new_s)
                print(
                    f"| {size:g} MB | {old_m:.2f} | {new_m:.2f} | {new_m / old_m:.2f}x |"
                    f" {statistics.median(moving):.2f} |"
                )
        finally:
            server.stop(grace_s=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
