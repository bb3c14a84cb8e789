"""Cluster submission with the real kfp.Client against a KFP v2beta1 API server on 127.0.0.1.

The server (tests/kfp_api_server.py) answers as the KFP backend does; its docstring cites the
kubeflow/pipelines sources each behaviour is taken from. What a user relies on: the credentials reach every
request (bearer token, rotating service-account token, Dex cookie), the namespace reaches experiments and
schedules, the pipeline is uploaded once with a version per compiled spec, a schedule is updated rather than
duplicated, and a rejected login says which setting to fix.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kfp_api_server import KfpApiServer
from pipelines_cli import run_pipelines_cli

from pipelines import cluster, cluster_auth
from pipelines.compile import COMPILED

ROOT = Path(__file__).resolve().parents[1]
CRON = "0 0 3 * * 0"


@pytest.fixture(autouse=True)
def hermetic_kfp(tmp_path, monkeypatch):
    """No developer state leaks in: KFP's CLI context file, a kubeconfig, a real service-account token."""
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(cluster_auth, "DEFAULT_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(cluster, "POD_NAMESPACE_PATH", str(tmp_path / "no-pod-namespace"))


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"KUBECONFIG": str(tmp_path / "no-kubeconfig"), **values}


def _api(server: KfpApiServer) -> list:
    return server.state.api_calls()


def _changed_package(tmp_path: Path) -> Path:
    """The compiled pipeline with one step's image changed: a different spec, still valid."""
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    executor = docs[0]["deploymentSpec"]["executors"]["exec-validate-dataset"]
    executor["container"]["image"] = "registry.example/sam2:other"
    out = tmp_path / "changed.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def test_token_namespace_and_versioned_pipeline_on_a_multi_user_backend(tmp_path):
    with KfpApiServer(token="tok-123", multi_user=True) as server:
        env = _env(tmp_path, KFP_TOKEN="tok-123", KFP_NAMESPACE="team-a")
        connection = cluster.connect(server.url, environ=env)
        assert connection.namespace == "team-a" and connection.multi_user
        first = cluster.submit(
            connection, {"dataset_name": "demo"}, "demo", package=COMPILED, wait_timeout_s=30
        )
        second = cluster.submit(connection, {"dataset_name": "demo", "epochs": 3}, "demo", package=COMPILED)
        changed = cluster.submit(
            connection, {"dataset_name": "demo"}, "demo", package=_changed_package(tmp_path)
        )

        calls = _api(server)
        assert calls and all(c.headers.get("authorization") == "Bearer tok-123" for c in calls)
        # one pipeline, created in the namespace; one version per distinct spec, reused when unchanged
        assert [
            c.body["namespace"] for c in calls if c.method == "POST" and c.path.endswith("/pipelines")
        ] == ["team-a"]
        uploads = [c for c in calls if c.path.endswith("/pipelines/upload_version")]
        assert len(uploads) == 2
        assert not first.version.reused and second.version.reused and not changed.version.reused
        assert first.version.version_id == second.version.version_id != changed.version.version_id
        digest = cluster.spec_digest(COMPILED)
        assert first.version.name == f"{cluster.code_version()}-{digest[:12]}"
        assert uploads[0].query["description"] == f"compiled spec sha256 {digest}"
        assert first.state == "SUCCEEDED" and second.state is None
        # runs start from the uploaded version (no embedded spec), in the data set's experiment, as sam2-pipeline
        runs = [c.body for c in calls if c.method == "POST" and c.path.endswith("/runs")]
        assert len(runs) == 3 and all("pipeline_spec" not in r for r in runs)
        assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in runs] == [
            first.version.version_id,
            first.version.version_id,
            changed.version.version_id,
        ]
        assert {r["service_account"] for r in runs} == {cluster.DEFAULT_SERVICE_ACCOUNT}
        (experiment,) = server.state.experiments.values()
        assert experiment["display_name"] == "sam2-demo" and experiment["namespace"] == "team-a"
        assert {r["experiment_id"] for r in runs} == {experiment["experiment_id"]}
        experiment_calls = [c for c in calls if c.path.endswith("/experiments")]
        assert {c.query.get("namespace") for c in experiment_calls if c.method == "GET"} == {"team-a"}
        assert [c.body["namespace"] for c in experiment_calls if c.method == "POST"] == ["team-a"]


def test_a_schedule_of_the_same_name_is_kept_or_replaced_never_duplicated(tmp_path):
    with KfpApiServer(token="t", multi_user=True) as server:
        connection = cluster.connect(
            server.url, environ=_env(tmp_path, KFP_TOKEN="t", KFP_NAMESPACE="team-a")
        )
        args = {"dataset_name": "demo"}
        created = cluster.schedule(connection, args, "demo", CRON, "sam2-demo-retrain", package=COMPILED)
        again = cluster.schedule(connection, args, "demo", CRON, "sam2-demo-retrain", package=COMPILED)
        assert (created.action, again.action) == ("created", "unchanged")
        assert again.recurring_run_id == created.recurring_run_id
        moved = cluster.schedule(
            connection, args, "demo", "0 0 4 * * 0", "sam2-demo-retrain", package=COMPILED
        )
        assert moved.action == "replaced" and moved.replaced == (created.recurring_run_id,)
        new_spec = cluster.schedule(
            connection, args, "demo", "0 0 4 * * 0", "sam2-demo-retrain", package=_changed_package(tmp_path)
        )
        assert new_spec.action == "replaced" and new_spec.replaced == (moved.recurring_run_id,)
        (only,) = server.state.recurring_runs.values()
        assert only["recurring_run_id"] == new_spec.recurring_run_id
        assert only["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 0" and only["namespace"] == "team-a"
        assert only["pipeline_version_reference"]["pipeline_version_id"] == new_spec.version.version_id
        assert only["max_concurrency"] in (1, "1") and only["no_catchup"] is True
        # another schedule name is another schedule
        other = cluster.schedule(connection, args, "demo", CRON, "sam2-demo-nightly", package=COMPILED)
        assert other.action == "created" and len(server.state.recurring_runs) == 2


def test_the_service_account_token_file_is_reread_as_the_kubelet_rotates_it(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    with KfpApiServer(token="first", multi_user=True) as server:
        env = _env(tmp_path, KF_PIPELINES_SA_TOKEN_PATH=str(token_file), KFP_NAMESPACE="team-a")
        connection = cluster.connect(server.url, environ=env)
        assert connection.credentials.source.startswith("KF_PIPELINES_SA_TOKEN_PATH=")
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        token_file.write_text("second\n")
        server.state.token = "second"
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        headers = [c.headers.get("authorization") for c in _api(server)]
        assert "Bearer first" in headers and headers[-1] == "Bearer second"


def test_a_dex_session_cookie_is_sent_as_a_cookie(tmp_path):
    with KfpApiServer(cookie="oauth2_proxy_kubeflow=abc", multi_user=True) as server:
        env = _env(tmp_path, KFP_COOKIES="oauth2_proxy_kubeflow=abc", KFP_NAMESPACE="team-a")
        connection = cluster.connect(server.url, environ=env)
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        calls = _api(server)
        assert all(c.headers.get("cookie") == "oauth2_proxy_kubeflow=abc" for c in calls)
        assert not any("authorization" in c.headers for c in calls)


def test_credentials_are_taken_in_the_documented_order(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("sa")
    everything = {"KFP_TOKEN": "env", "KF_PIPELINES_SA_TOKEN_PATH": str(token_file), "KFP_COOKIES": "c=1"}
    assert cluster.resolve_credentials("flag", everything).token == "flag"
    assert cluster.resolve_credentials(None, everything).token == "env"
    assert cluster.resolve_credentials(None, everything | {"KFP_TOKEN": ""}).token_path == str(token_file)
    assert cluster.resolve_credentials(None, {"KFP_COOKIES": "c=1"}).cookies == "c=1"
    assert cluster.resolve_credentials(None, {}).source == "none"
    with pytest.raises(cluster.ClusterAuthError, match="KF_PIPELINES_SA_TOKEN_PATH=.*no such file"):
        cluster.resolve_credentials(None, {"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "missing")})
    # KFP's default in-cluster path is used when present
    cluster_auth.DEFAULT_SA_TOKEN_PATH = str(token_file)
    assert cluster.resolve_credentials(None, {"KFP_COOKIES": "c=1"}).token_path == str(token_file)
    assert "sa" not in repr(cluster.resolve_credentials(None, {"KFP_TOKEN": "sa"}))  # never in logs


def test_namespace_from_kfp_namespace_else_the_kube_context(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "work",
                "contexts": [
                    {"name": "work", "context": {"cluster": "c", "user": "u", "namespace": "team-b"}}
                ],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    assert cluster.resolve_namespace(None, {"KUBECONFIG": str(kubeconfig)}) == "team-b"
    assert (
        cluster.resolve_namespace(None, {"KUBECONFIG": str(kubeconfig), "KFP_NAMESPACE": "team-a"})
        == "team-a"
    )
    assert cluster.resolve_namespace("flag", {"KFP_NAMESPACE": "team-a"}) == "flag"
    assert cluster.resolve_namespace(None, _env(tmp_path)) is None


def test_multi_user_without_a_namespace_names_kfp_namespace(tmp_path):
    with (
        KfpApiServer(token="t", multi_user=True) as server,
        pytest.raises(cluster.ClusterError, match="multi-user.*set KFP_NAMESPACE"),
    ):
        cluster.connect(server.url, environ=_env(tmp_path, KFP_TOKEN="t"))


def test_single_user_backends_get_no_namespace(tmp_path):
    with KfpApiServer(multi_user=False) as server:
        connection = cluster.connect(server.url, environ=_env(tmp_path, KFP_NAMESPACE="team-a"))
        assert connection.namespace is None and connection.credentials.source == "none"
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        assert all("namespace" not in c.query for c in _api(server) if "/experiments" in c.path)


@pytest.mark.parametrize("login_page", [False, True])
def test_a_rejected_login_names_kfp_token_and_kfp_cookies(tmp_path, login_page):
    with KfpApiServer(token="right", multi_user=True, login_page=login_page) as server:
        for env in ({"KFP_TOKEN": "wrong"}, {}):
            with pytest.raises(cluster.ClusterAuthError) as caught:
                cluster.connect(server.url, environ=_env(tmp_path, KFP_NAMESPACE="team-a", **env))
            message = str(caught.value)
            assert "KFP_TOKEN" in message and "KFP_COOKIES" in message
            assert ("login page" in message) == login_page
            assert "wrong" not in message  # the rejected secret is not echoed
        # one request each: no retry loop before the answer
        assert len([c for c in _api(server) if c.path.endswith("/healthz")]) == 2


def test_a_401_in_the_middle_is_the_same_clear_error(tmp_path):
    with KfpApiServer(token="t", multi_user=True) as server:
        connection = cluster.connect(
            server.url, environ=_env(tmp_path, KFP_TOKEN="t", KFP_NAMESPACE="team-a")
        )
        server.state.token = "revoked"
        with pytest.raises(
            cluster.ClusterAuthError, match="looking up pipeline.*401.*KFP_TOKEN.*KFP_COOKIES"
        ):
            cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)


def test_a_failed_run_is_an_error_naming_the_run(tmp_path):
    with KfpApiServer(multi_user=False, final_run_state="FAILED") as server:
        connection = cluster.connect(server.url, environ=_env(tmp_path))
        with pytest.raises(cluster.ClusterError, match="run run-.* ended as FAILED"):
            cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED, wait_timeout_s=30)


def test_waiting_polls_until_the_run_is_over_and_gives_up_with_the_run_still_going(tmp_path):
    with KfpApiServer(multi_user=False, running_polls=2) as server:
        connection = cluster.connect(server.url, environ=_env(tmp_path))
        done = cluster.submit(
            connection, {"dataset_name": "demo"}, "demo", package=COMPILED, wait_timeout_s=30, poll_s=0.01
        )
        assert done.state == "SUCCEEDED" and server.state.run_polls[done.run_id] == 3
        server.state.running_polls = 10**6
        with pytest.raises(cluster.ClusterError, match="still RUNNING after .* it goes on running"):
            cluster.submit(
                connection,
                {"dataset_name": "demo"},
                "demo",
                package=COMPILED,
                wait_timeout_s=0.05,
                poll_s=0.01,
            )


def test_the_backend_rejects_what_the_pipeline_does_not_declare(tmp_path):
    """The fake checks run parameters as the backend does, so the next tests' parameters are meaningful."""
    with KfpApiServer(multi_user=False) as server:
        connection = cluster.connect(server.url, environ=_env(tmp_path))
        with pytest.raises(cluster.ClusterError, match="not required by pipeline: no_such_parameter"):
            cluster.submit(connection, {"no_such_parameter": 1}, "demo", package=COMPILED)
        with pytest.raises(cluster.ClusterError, match="epochs requires type NUMBER_INTEGER"):
            cluster.submit(connection, {"epochs": "many"}, "demo", package=COMPILED)


def test_cli_submit_takes_node_counts_from_the_pipeline_or_the_caller_not_the_laptop_preset(tmp_path):
    with KfpApiServer(token="t", multi_user=True) as server:
        env = {"KFP_HOST": server.url, "KFP_TOKEN": "t", "KFP_NAMESPACE": "team-a"}
        plain = run_pipelines_cli(tmp_path, "submit", "--dataset", "demo", **env)
        assert plain.returncode == 0, plain.stderr
        scaled = run_pipelines_cli(
            tmp_path, "submit", "--dataset", "demo", "--set", "num_nodes=4", "--set", "gpus_per_node=8", **env
        )
        assert scaled.returncode == 0, scaled.stderr
        assert (
            "submitted run run-" in plain.stdout
            and "(uploaded)" in plain.stdout
            and "(reused)" in scaled.stdout
        )
        assert "namespace team-a" in plain.stdout and "experiment sam2-demo" in plain.stdout
        runs = [c.body for c in _api(server) if c.method == "POST" and c.path.endswith("/runs")]
        first, second = (r["runtime_config"]["parameters"] for r in runs)
        assert not {"num_nodes", "gpus_per_node", "train_launcher"} & set(first)  # the pipeline's defaults
        assert first["model_size"] == "t" and first["source_uri"] == "demo:"
        assert (second["num_nodes"], second["gpus_per_node"]) == (4, 8)


def test_cli_schedule_says_what_it_did(tmp_path):
    with KfpApiServer(multi_user=False) as server:
        env = {"KFP_HOST": server.url}
        outputs = [
            run_pipelines_cli(tmp_path, "schedule", "--dataset", "demo", "--cron", cron, **env)
            for cron in (CRON, CRON, "0 0 5 * * *")
        ]
        assert [o.returncode for o in outputs] == [0, 0, 0], [o.stderr for o in outputs]
        assert " created: " in outputs[0].stdout and " unchanged: " in outputs[1].stdout
        assert " replaced (replaced recurring-" in outputs[2].stdout
        assert len(server.state.recurring_runs) == 1
        bad = run_pipelines_cli(tmp_path, "schedule", "--dataset", "demo", "--cron", "0 3 * * 0", **env)
        assert bad.returncode == 2 and "six fields" in bad.stderr


def test_cli_rejected_token_is_one_clear_line(tmp_path):
    with KfpApiServer(token="right", multi_user=True) as server:
        proc = run_pipelines_cli(
            tmp_path, "submit", "--dataset", "demo", KFP_HOST=server.url, KFP_TOKEN="wrong", KFP_NAMESPACE="x"
        )
        assert proc.returncode == 1
        assert "KFP_TOKEN" in proc.stderr and "KFP_COOKIES" in proc.stderr and "Traceback" not in proc.stderr


def test_a_non_demo_run_without_initial_weights_is_refused_at_submission(tmp_path):
    env = {"KFP_HOST": "http://127.0.0.1:1", "MOSE_ROOT": "s3://data/mose/train.tar.gz"}
    proc = run_pipelines_cli(tmp_path, "submit", "--dataset", "mose", **env)
    assert (
        proc.returncode == 2
        and "allow_random_init=true" in proc.stderr
        and "SAM2_INIT_CHECKPOINT_URI" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    with KfpApiServer(multi_user=False) as server:
        for extra in (["--set", "allow_random_init=true"], ["--set", "init_checkpoint_uri=s3://m/b+.pt"]):
            ok = run_pipelines_cli(
                tmp_path, "submit", "--dataset", "mose", *extra, **(env | {"KFP_HOST": server.url})
            )
            assert ok.returncode == 0, ok.stderr
        params = [c.body["runtime_config"]["parameters"] for c in _api(server) if c.path.endswith("/runs")]
        assert params[0]["allow_random_init"] is True and params[1]["init_checkpoint_uri"] == "s3://m/b+.pt"
        assert {p["source_uri"] for p in params} == {"s3://data/mose/train.tar.gz"}


def test_compiled_pipeline_parses_strictly_as_the_backend_reads_it():
    """PipelineSpec, PlatformSpec and every KubernetesExecutorConfig, unknown fields rejected (the fake's
    upload check; a field an older backend does not know fails there the same way)."""
    from kfp_api_server import _parse_package

    spec = _parse_package(COMPILED.read_bytes())
    assert spec["pipelineInfo"]["name"] == "sam2-finetune"
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    bad = json.loads(json.dumps(docs))
    bad[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]["secretAsEnv"][0][
        "notAField"
    ] = 1
    from kfp_api_server import ApiError

    with pytest.raises(ApiError, match="notAField"):
        _parse_package(yaml.safe_dump_all(bad).encode())


def test_cluster_presets_leave_node_counts_to_the_pipeline():
    from pipelines.presets import load_preset

    env = {"MOSE_ROOT": "s3://data/mose.tar"}
    for name in ("demo", "mose"):
        local, remote = load_preset(name, env), load_preset(name, env, target="cluster")
        assert {"num_nodes", "gpus_per_node", "train_launcher"} <= set(local)
        assert not {"num_nodes", "gpus_per_node", "train_launcher"} & set(remote)
        assert {k: v for k, v in local.items() if k in remote} == remote
    assert load_preset("demo", {})["train_launcher"] == "local"


def test_version_names_come_from_the_commit_or_else_the_package(tmp_path):
    from importlib.metadata import version

    if (ROOT / ".git").exists():  # a source tarball has none: then the package version, below
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        assert cluster.code_version().startswith(f"{version('sam2-kubeflow')}-{head.stdout.strip()}")
    # outside a checkout (an installed wheel), even inside someone else's repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages").mkdir()
    assert cluster.code_version(tmp_path / "site-packages") == version("sam2-kubeflow")


@pytest.mark.parametrize("version", ["2.16.1", "2.17.0"])
def test_runs_and_schedules_ask_kfp_217_for_the_mlflow_experiment_of_the_data_set(tmp_path, version):
    """KFP 2.17.0 added Run/RecurringRun.plugins_input (backend/api/v2beta1/run.proto field 19,
    recurring_run.proto field 19; absent at 2.16.x, whose API server refuses it as an unknown field, as the
    fake does below 2.17.0); its MLflow plugin reads plugins_input.mlflow.experiment_name
    (backend/src/apiserver/plugins/mlflow/config.go at 2.17.0, MLflowPluginInput)."""
    with KfpApiServer(token="t", multi_user=True, version=version) as server:
        connection = cluster.connect(
            server.url, environ=_env(tmp_path, KFP_TOKEN="t", KFP_NAMESPACE="team-a")
        )
        run = cluster.submit(connection, {"dataset_name": "mose"}, "mose", package=COMPILED)
        job = cluster.schedule(
            connection, {"dataset_name": "mose"}, "mose", CRON, "sam2-mose-retrain", package=COMPILED
        )
        again = cluster.schedule(
            connection, {"dataset_name": "mose"}, "mose", CRON, "sam2-mose-retrain", package=COMPILED
        )
        stored_run = server.state.runs[run.run_id]
        stored_job = server.state.recurring_runs[job.recurring_run_id]
    expected = {"mlflow": {"experiment_name": "sam2-mose"}} if version == "2.17.0" else None
    assert stored_run.get("plugins_input") == expected and stored_job.get("plugins_input") == expected
    assert again.action == "unchanged"
    # the rest of the run is what it was: the version reference, parameters, service account
    assert stored_run["pipeline_version_reference"]["pipeline_version_id"] == run.version.version_id
    assert stored_run["runtime_config"]["parameters"] == {"dataset_name": "mose"}
    assert stored_job["trigger"]["cron_schedule"]["cron"] == CRON and stored_job["mode"] == "ENABLE"
