"""`make serve`: the local champion (`models:/sam2-<DATASET>@champion` in `.local/mlflow`, after
`make pipeline-run`) served by KServe's model server on 127.0.0.1, exactly as the InferenceService runs it.

Before serving it writes `.local/serve-request.json`, a V1 request for the first val video of the
champion's run (its frames on the local S3 server, its first-frame masks as COCO RLE), and logs the curl
command that sends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.local_run import LOCAL_DIR, ensure_local_services

logger = logging.getLogger(__name__)


def champion_example_request(dataset: str, local_dir: Path = LOCAL_DIR) -> dict[str, Any]:
    """A tracking request for the first val video of the champion's run: frames and first-frame masks
    from the data set version it was scored on. Raises SystemExit when there is no champion."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sam2.eval.masks import read_mask_png
    from sam2.serving import rle
    from sam2.storage import ObjectStore

    name = f"sam2-{dataset}"
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        raise SystemExit(
            f"no champion of {name} in {os.environ['MLFLOW_TRACKING_URI']}: run `make pipeline-run DATASET={dataset}` first"
        ) from None
    params = client.get_run(version.run_id).data.params if version.run_id else {}
    dataset_uri, val_list = params.get("dataset_uri", ""), params.get("val_list_uri", "")
    if not (dataset_uri and val_list):
        raise SystemExit(f"{name} v{version.version} has no run with dataset_uri / val_list_uri params")
    store = ObjectStore()
    video = store.read_bytes(val_list).decode().split()[0]
    annotations = store.list_objects(f"{dataset_uri}/Annotations/{video}")
    first = min(annotations, key=lambda n: int(Path(n).stem))
    local_dir.mkdir(parents=True, exist_ok=True)
    local = local_dir / "serve-first-mask.png"
    store.download_file(f"{dataset_uri}/Annotations/{video}/{first}", local)
    ids = read_mask_png(local)
    frame = int(Path(first).stem)
    return {
        "video": f"{dataset_uri}/JPEGImages/{video}",
        "start_frame": frame,
        "objects": [{"id": int(i), "mask": rle.encode(ids == i)} for i in np.unique(ids) if i > 0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="demo", help="serve models:/sam2-<dataset>@champion")
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument(
        "--local_dir", type=Path, default=LOCAL_DIR, help="where serve-request.json is written"
    )
    parser.add_argument("--no_example", action="store_true", help="do not write the example request")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ensure_local_services(args.local_dir)
    os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["S3_ENDPOINT_URL"])
    if not args.no_example:
        request = champion_example_request(args.dataset, args.local_dir)
        path = args.local_dir / "serve-request.json"
        path.write_text(json.dumps({"instances": [request]}))
        logger.info(
            "example request for val video %s: curl -s -H 'Content-Type: application/json' -d @%s "
            "http://127.0.0.1:%d/v1/models/sam2:predict",
            request["video"],
            path,
            args.http_port,
        )
    from sam2.serving.__main__ import main as serve

    serve(
        [
            f"--model_uri=models:/sam2-{args.dataset}@champion",
            "--model_name=sam2",
            f"--http_port={args.http_port}",
            "--enable_grpc=false",
            *rest,
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
