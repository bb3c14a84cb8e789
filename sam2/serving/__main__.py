"""`python -m sam2.serving --model_uri models:/sam2-demo@champion`: the KServe model server with the tracker.

KServe's own flags (`--http_port`, `--grpc_port`, `--workers`, `--enable_grpc`, ...) are read by the
kserve package from the same command line; ours select the registered version and bound the work.
"""

from __future__ import annotations

import argparse
import logging
import os

from kserve import ModelServer
from kserve import model_server as kserve_model_server

from sam2.serving.kserve_model import SAM2VideoTracker

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser], description=__doc__)
    parser.add_argument(
        "--model_uri",
        default=os.environ.get("SAM2_MODEL_URI"),
        help="registered version to serve: models:/sam2-<data set>@champion or models:/sam2-<data set>/<version> "
        "(default: $SAM2_MODEL_URI)",
    )
    parser.add_argument("--max_concurrent", type=int, default=1, help="requests tracking at once")
    parser.add_argument(
        "--max_frames", type=int, default=300, help="most frames one request tracks (longer videos: pages)"
    )
    parser.add_argument(
        "--max_download_mb", type=int, default=2048, help="largest video or page a request may fetch"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args, _ = build_parser().parse_known_args(argv)
    if not args.model_uri:
        raise SystemExit(
            "no model to serve: pass --model_uri models:/sam2-<data set>@champion or set SAM2_MODEL_URI"
        )
    if not args.model_uri.startswith("models:/"):
        raise SystemExit(
            f"--model_uri {args.model_uri!r} is not a registry URI like models:/sam2-demo@champion"
        )
    model = SAM2VideoTracker(
        args.model_name,
        args.model_uri,
        max_concurrent=args.max_concurrent,
        max_frames=args.max_frames,
        max_download_bytes=args.max_download_mb << 20,
    )
    model.load()
    # ModelServer's defaults come from sys.argv (kserve parses it at import); pass ours, so a caller's argv
    # (make serve) decides.
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    server.start([model])


if __name__ == "__main__":
    main()
