"""Run the SAM 2 fine-tuning pipeline: `python -m pipelines.run [run|submit|schedule] --dataset demo|mose`.

- `run` (default): on this machine through kfp.local when KFP_HOST is unset (local S3 server and MLflow on
  SQLite under .local/), else submitted to KFP_HOST and waited for;
- `submit`: start a run on KFP_HOST (or --host) and return;
- `schedule --cron "0 0 3 * * 0"`: a recurring run on KFP_HOST (KFP cron: six fields, seconds first).

`--set key=value` overrides any pipeline parameter (see pipelines/sam2_finetune.py), e.g.
`--set epochs=2 --set init_checkpoint_uri=s3://sam2-models/sam2.1_hiera_tiny.pt`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from pipelines.presets import PresetError, available_presets, load_preset
from sam2.utils.redaction import redact_url


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PresetError(f"--set expects key=value, got {item!r}")
        values[key] = yaml.safe_load(raw) if raw else ""
    return values


def _print_local_summary(outputs: dict[str, Any], arguments: dict[str, Any], seconds: float) -> None:
    from sam2.registry import model_name_for

    run_uri = outputs["run_uri"]
    random_init = not arguments.get("init_checkpoint_uri")
    print()
    print(f"pipeline finished in {seconds / 60:.1f} min")
    print(f"overall J&F: {outputs['jf']:.2f}")
    print(f"registered: {outputs['model_version']} in {redact_url(os.environ.get('MLFLOW_TRACKING_URI'))}")
    print(
        f"decision: {outputs['decision'].upper()} (model {model_name_for(arguments['dataset_name'])}, "
        f"margin {arguments.get('promotion_margin', 1.0)})"
    )
    print(f"artifacts ({redact_url(os.environ.get('S3_ENDPOINT_URL'))}):")
    print(
        f"  data set:    s3://{arguments.get('data_bucket', 'sam2-data')}/datasets/{arguments['dataset_name']}/"
    )
    for part in ("checkpoints/", "tensorboard/", "predictions/", "metrics.json", "report.md"):
        print(f"  {part:<13}{run_uri}/{part}")
    print("  KFP local outputs: .local/kfp/")
    if random_init:
        print(
            "NOTE: training started from RANDOM weights (no init_checkpoint_uri; no SAM 2.1 weights are "
            "downloadable here): this J&F is that of a model trained from scratch for a few minutes, which "
            "shows the pipeline learns, not what SAM 2.1 reaches. Fine-tune real weights with "
            "--set init_checkpoint_uri=s3://<bucket>/sam2.1_hiera_tiny.pt"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "submit", "schedule"])
    parser.add_argument("--dataset", default="demo", help=f"preset: {', '.join(available_presets())}")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--host", default=os.environ.get("KFP_HOST", ""), help="KFP endpoint (default $KFP_HOST)"
    )
    parser.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE") or None)
    parser.add_argument("--cron", default="", help="schedule: six-field KFP cron, seconds first")
    parser.add_argument("--wait-hours", type=float, default=72.0, help="run on a cluster: how long to wait")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        arguments = load_preset(args.dataset) | _parse_sets(args.sets)
    except PresetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.action == "run" and not args.host:
        from pipelines.local_run import run_locally

        start = time.monotonic()
        outputs = run_locally(arguments)
        _print_local_summary(outputs, arguments, time.monotonic() - start)
        return 0

    if not args.host:
        print(f"error: `{args.action}` needs a KFP endpoint: set KFP_HOST or pass --host", file=sys.stderr)
        return 2
    from pipelines import cluster

    # A cluster run uses the PyTorchJob launcher unless the caller insists otherwise.
    if "train_launcher" not in {s.partition("=")[0] for s in args.sets}:
        arguments.pop("train_launcher", None)
    if args.action == "schedule":
        if not args.cron:
            print('error: schedule needs --cron, e.g. --cron "0 0 3 * * 0"', file=sys.stderr)
            return 2
        job = cluster.schedule(
            args.host, arguments, args.cron, f"sam2-{args.dataset}-retrain", namespace=args.namespace
        )
        print(f"scheduled recurring run {job} ({args.cron}) on {args.host}")
        return 0
    wait = args.wait_hours * 3600 if args.action == "run" else None
    run_id = cluster.submit(args.host, arguments, namespace=args.namespace, wait_timeout_s=wait)
    print(f"{'finished' if wait else 'submitted'} run {run_id} on {args.host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
