"""Run the SAM 2 fine-tuning pipeline: `python -m pipelines.run [run|submit|schedule|follow] --dataset demo|mose`.

- `run` (default): on this machine through kfp.local when KFP_HOST is unset (local S3 server and MLflow on
  SQLite under .local/), else submitted to KFP_HOST and waited for;
- `submit`: start a run on KFP_HOST (or --host) and return;
- `schedule --cron "0 0 3 * * 0"`: a recurring run on KFP_HOST (KFP cron: six fields, seconds first); its
  source must be an s3:// prefix that new data lands in (a local MOSE_ROOT is refused: it would be read
  once, at scheduling);
- `follow <run-id>`: wait for a run on KFP_HOST that is already going (what `run` prints when it stops
  following one).

`--set key=value` overrides any pipeline parameter (see pipelines/sam2_finetune.py), e.g.
`--set epochs=2 --set init_checkpoint_uri=s3://sam2-models/sam2.1_hiera_tiny.pt`. A run without
init_checkpoint_uri is refused unless `--set allow_random_init=true` (the demo preset sets it).

On a cluster (pipelines/cluster.py): credentials from --token / KFP_TOKEN, the service-account token file
(KF_PIPELINES_SA_TOKEN_PATH), a Dex login (KFP_USERNAME / KFP_PASSWORD, KFP_DEX_CONNECTOR), or KFP_COOKIES; namespace from --namespace / KFP_NAMESPACE or the kube
context; a local data set source is uploaded to the data bucket first (pipelines/cluster_inputs.py); node
and GPU counts are the pipeline's unless set (`--set num_nodes=4`; the Makefile's NUM_NODES, GPUS_PER_NODE).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from pipelines.presets import PresetError, available_presets, load_preset
from sam2.utils.cli_errors import cli_entry
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
    from sam2.promotion.rules import model_name_for

    run_uri = outputs["run_uri"]
    random_init = not arguments.get("init_checkpoint_uri")
    print()
    print(f"pipeline finished in {seconds / 60:.1f} min")
    print(f"overall J&F: {outputs['jf']:.2f}")
    print("scored in this run on the same val videos:")  # promote's one-line comparison, one model a line
    for line in filter(None, str(outputs.get("comparison", "")).split("; ")):
        print(f"  {line}")
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


_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Integer": (int,),
    "Float": (int, float),
    "Boolean": (bool,),
    "Dict": (dict,),
    "List": (list,),
}


def check_parameters(arguments: dict[str, Any], sets: dict[str, Any]) -> None:
    """Every `--set` names a pipeline parameter and has its type (an unknown name or `epochs=abc` is
    refused here, naming it, instead of failing inside KFP). Raises PresetError."""
    from pipelines.sam2_finetune import sam2_finetune

    inputs = sam2_finetune.component_spec.inputs
    for key, value in sets.items():
        if key not in inputs:
            close = sorted(name for name in inputs if key.lower() in name or name in key.lower())
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise PresetError(
                f"--set {key}=...: the pipeline has no parameter {key!r}{hint}; its parameters are in "
                "pipelines/sam2_finetune.py"
            )
        kind = inputs[key].type
        wanted = _PARAMETER_TYPES.get(kind, (object,))
        if kind == "String" and isinstance(value, (int, float, bool)):
            arguments[key] = str(value).lower() if isinstance(value, bool) else str(value)
            continue
        if not isinstance(value, wanted) or (kind in ("Integer", "Float") and isinstance(value, bool)):
            raise PresetError(
                f"--set {key}={value!r}: {key} is {'an' if kind == 'Integer' else 'a'} {kind.lower()} parameter (default "
                f"{inputs[key].default!r}); pass e.g. --set {key}={inputs[key].default!r}"
            )
    init = str(arguments.get("init_checkpoint_uri") or "")
    if init and not init.startswith("s3://"):
        raise PresetError(
            f"init_checkpoint_uri (SAM2_INIT_CHECKPOINT_URI or --set) is {init!r}, a path on this machine: the "
            "pipeline's steps read the weights from object storage. Upload them (e.g. `aws s3 cp "
            f"{init} s3://sam2-models/`) and pass the s3:// URI"
        )


def check_initial_weights(arguments: dict[str, Any]) -> None:
    """A run without init_checkpoint_uri trains from random weights: refused unless allow_random_init is set.

    The demo preset sets allow_random_init (no SAM 2.1 weights can be downloaded there); a real data set
    would otherwise spend its GPU hours on a model trained from scratch.
    """
    if arguments.get("init_checkpoint_uri") or arguments.get("allow_random_init") is True:
        return
    raise PresetError(
        f"data set {arguments.get('dataset_name')!r} has no initial checkpoint, so it would train from RANDOM "
        "weights: set SAM2_INIT_CHECKPOINT_URI or --set init_checkpoint_uri=s3://<bucket>/sam2.1_hiera_base_plus.pt "
        "(an official SAM 2.1 checkpoint), or --set allow_random_init=true to train from scratch on purpose"
    )


def check_schedule_source(arguments: dict[str, Any]) -> None:
    """A recurring run must read a source that new data lands in: an s3:// prefix or object, or demo:.

    A local MOSE_ROOT would be uploaded once, to a prefix named by today's content, and every scheduled
    run would retrain on that same data, so it is refused with what to pass instead.
    """
    from pipelines.cluster_inputs import is_local_source

    source = str(arguments.get("source_uri", ""))
    if is_local_source(source):
        raise PresetError(
            f"a recurring run reads its source at every run, but {source!r} is a path on this machine: it would "
            "be uploaded once and every scheduled run would retrain on that same data. Put the data where new "
            "data lands and pass that prefix: MOSE_ROOT=s3://<bucket>/<prefix>/ (or --set "
            "source_uri=s3://<bucket>/<prefix>/), e.g. after `aws s3 sync <folder> s3://<bucket>/<prefix>/`; "
            "each scheduled run then extracts what is there at that time (docs/cluster-login.md)"
        )


def _cluster_source(arguments: dict[str, Any], dataset: str) -> None:
    """A local source (MOSE_ROOT on this machine) is uploaded to the data bucket; the run gets its s3:// URI."""
    from pipelines.cluster_inputs import is_local_source, stage_source
    from pipelines.sam2_finetune import sam2_finetune
    from sam2.storage import StorageError

    source = str(arguments.get("source_uri", ""))
    if not is_local_source(source):
        return
    bucket = arguments.get("data_bucket") or sam2_finetune.component_spec.inputs["data_bucket"].default
    try:
        staged = stage_source(source, bucket, dataset)
    except StorageError as err:
        raise PresetError(
            f"a pod cannot read {source} on this machine, so it is uploaded to s3://{bucket}/sources/{dataset}/ "
            "first, which needs the cluster's object store from here: set S3_ENDPOINT_URL (e.g. "
            "http://localhost:9000 after `kubectl -n <namespace> port-forward svc/minio 9000`), "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the source as an s3:// URI. "
            f"The object store said: {err}"
        ) from None
    what = "uploaded to" if staged.uploaded else "already in the data bucket, same content, at"
    print(
        f"data set source {source}: {what} {staged.uri} ({staged.num_files} files, {staged.num_bytes / 1e9:.2f} GB)"
    )
    arguments["source_uri"] = staged.uri


def _follow(args: argparse.Namespace) -> int:
    """Wait for a run that is already going; 0 when it SUCCEEDED, 1 otherwise (or when following stops)."""
    from pipelines import cluster

    try:
        connection = cluster.connect(args.host, namespace=args.namespace, token=args.token)
        state = cluster.wait_for_run(connection, args.run_id, args.wait_hours * 3600, args.poll_seconds)
    except cluster.ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {args.run_id}: {state} ({cluster.run_url(connection, args.run_id)})")
    return 0 if state == "SUCCEEDED" else 1


@cli_entry  # anything not caught below: one line, exit 2 / 201 / 1 (docs/errors-and-exit-codes.md)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "submit", "schedule", "follow"])
    parser.add_argument("run_id", nargs="?", default=None, help="follow: the run to follow")
    parser.add_argument("--dataset", default="demo", help=f"preset: {', '.join(available_presets())}")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--host", default=os.environ.get("KFP_HOST", ""), help="KFP endpoint (default $KFP_HOST)"
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="profile namespace (default $KFP_NAMESPACE, else the kube context's)",
    )
    parser.add_argument("--token", default=None, help="KFP bearer token (default $KFP_TOKEN; see README)")
    parser.add_argument("--cron", default="", help="schedule: six-field KFP cron, seconds first")
    parser.add_argument(
        "--wait-hours", type=float, default=72.0, help="run/follow on a cluster: how long to wait"
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=30.0, help="run/follow: seconds between state checks"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    on_cluster = bool(args.host)
    try:
        if args.action != "run" and not on_cluster:
            raise PresetError(f"`{args.action}` needs a KFP endpoint: set KFP_HOST or pass --host")
        if (args.action == "follow") != bool(args.run_id):
            raise PresetError(
                "`follow` needs the run id: python -m pipelines.run follow <run-id>"
                if args.action == "follow"
                else f"`{args.action}` takes no run id (got {args.run_id!r}); to follow a run: follow <run-id>"
            )
        if args.action == "follow":
            return _follow(args)
        if args.action == "schedule":
            from pipelines.cluster import check_cron

            check_cron(args.cron)
        target = "cluster" if on_cluster else "local"
        sets = _parse_sets(args.sets)
        arguments = load_preset(args.dataset, target=target) | sets
        check_parameters(arguments, sets)
        check_initial_weights(arguments)
        if args.action == "schedule":
            check_schedule_source(arguments)
    except (PresetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not on_cluster:
        from pipelines.local_run import run_locally

        start = time.monotonic()
        outputs = run_locally(arguments)
        _print_local_summary(outputs, arguments, time.monotonic() - start)
        return 0

    from pipelines import cluster

    try:
        connection = cluster.connect(args.host, namespace=args.namespace, token=args.token)
        try:  # after connecting: a rejected login should not wait for a data set upload
            _cluster_source(arguments, args.dataset)
        except PresetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        where = f"{connection.host}" + (
            f" (namespace {connection.namespace})" if connection.namespace else ""
        )
        if args.action == "schedule":
            job = cluster.schedule(
                connection, arguments, args.dataset, args.cron, f"sam2-{args.dataset}-retrain"
            )
            detail = f" (replaced {', '.join(job.replaced)})" if job.replaced else ""
            print(
                f"recurring run sam2-{args.dataset}-retrain {job.action}{detail}: {job.recurring_run_id} "
                f"({args.cron}) from pipeline version {job.version.name} on {where}"
            )
            return 0
        wait = args.wait_hours * 3600 if args.action == "run" else None
        run = cluster.submit(
            connection, arguments, args.dataset, wait_timeout_s=wait, poll_s=args.poll_seconds
        )
    except cluster.ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1  # 2: a wrong setting (KFP_HOST at another server)
    reused = "reused" if run.version.reused else "uploaded"
    print(
        f"{'finished' if wait else 'submitted'} run {run.run_id} of pipeline version {run.version.name} "
        f"({reused}) in experiment {cluster.experiment_name(args.dataset)} on {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
