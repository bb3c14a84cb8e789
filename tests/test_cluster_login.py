"""Logging in to a stock Kubeflow 26.03 and following a run there, with the real kfp.Client and requests.

The server is tests/kfp_api_server.py behind tests/kubeflow_gateway.py, which answers as the
distribution's ingress gateway, oauth2-proxy and Dex do (each behaviour cited there to
kubeflow/manifests at tag 26.03: common/oauth2-proxy/base/oauth2_proxy.cfg, overlays/m2m-dex-only and
m2m-dex-and-kind, components/istio-external-auth/requestauthentication.dex-jwt.yaml, common/dex).
The login flow under test is the one the Kubeflow docs give for the SDK outside the cluster
(kubeflow/website connect-api.md, "Kubeflow Community Distribution - Outside the Cluster").
"""

from __future__ import annotations

import time

import pytest
from kfp_api_server import KfpApiServer
from kubeflow_gateway import Gateway, kubernetes_token, make_jwt
from pipelines_cli import run_pipelines_cli

from pipelines import cluster, cluster_auth
from pipelines.compile import COMPILED

USER, PASSWORD = "user@example.com", "12341234"  # the default install's Dex static user
NAMESPACE = "kubeflow-user-example-com"
CRON = "0 0 3 * * 0"


@pytest.fixture(autouse=True)
def hermetic_kfp(tmp_path, monkeypatch):
    """No developer state leaks in: KFP's CLI context file, a kubeconfig, a real service-account token."""
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(cluster_auth, "DEFAULT_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(cluster, "POD_NAMESPACE_PATH", str(tmp_path / "no-pod-namespace"))


def _env(tmp_path, **values: str) -> dict[str, str]:
    return {"KUBECONFIG": str(tmp_path / "no-kubeconfig"), "KFP_NAMESPACE": NAMESPACE} | values


def _login_env(tmp_path, **values: str) -> dict[str, str]:
    return _env(tmp_path, **({"KFP_USERNAME": USER, "KFP_PASSWORD": PASSWORD} | values))


def _api_users(server: KfpApiServer) -> set:
    return {c.user for c in server.state.api_calls()}


def test_username_and_password_upload_run_schedule_and_follow_past_the_cookie_lifetime(tmp_path):
    """The 'Done when' of a default 26.03 install: one Dex login per cookie lifetime, nothing refused."""
    gateway = Gateway(cookie_expire_s=1.0)  # oauth2-proxy's cookie_expire is 24h; shortened here
    with KfpApiServer(gateway=gateway, multi_user=True, running_polls=14) as server:
        connection = cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        assert connection.credentials.source.startswith("KFP_USERNAME=user@example.com")
        assert gateway.logins == [USER]
        started = time.monotonic()
        run = cluster.submit(
            connection, {"dataset_name": "demo"}, "demo", package=COMPILED, wait_timeout_s=60, poll_s=0.2
        )
        followed_s = time.monotonic() - started
        assert run.state == "SUCCEEDED" and followed_s > 2 * gateway.cookie_expire_s
        time.sleep(gateway.cookie_expire_s)  # the session has expired again before the schedule
        job = cluster.schedule(
            connection, {"dataset_name": "demo"}, "demo", CRON, "sam2-demo-retrain", package=COMPILED
        )
        assert job.action == "created"
        # logged in again each time the cookie had expired, and never between
        assert 3 <= len(gateway.logins) <= 2 + followed_s / gateway.cookie_expire_s
        assert connection.logins == len(gateway.logins) - 1
        # every API request reached the backend as the user (the gateway's kubeflow-userid)
        calls = server.state.api_calls()
        assert {c.user for c in calls} == {USER}
        assert any(c.path.endswith("/upload_version") for c in calls)
        assert server.state.run_polls[run.run_id] == 15
        # 401s happened (the expired cookie) and each was followed by a login, not an error
        refused = [r for r in server.state.requests if "/apis/" in r.path and r.user is None]
        assert len(refused) == len(gateway.logins) - 1
        assert all(not any(k == "authorization" for k in c.headers) for c in refused)


def test_cli_run_submit_schedule_and_follow_with_a_dex_login(tmp_path):
    gateway = Gateway()
    with KfpApiServer(gateway=gateway, multi_user=True, running_polls=2) as server:
        env = _login_env(tmp_path, KFP_HOST=server.kfp_host)
        ran = run_pipelines_cli(tmp_path, "run", "--dataset", "demo", "--poll-seconds", "0.05", **env)
        assert ran.returncode == 0, ran.stderr
        assert "finished run run-" in ran.stdout and f"namespace {NAMESPACE}" in ran.stdout
        submitted = run_pipelines_cli(tmp_path, "submit", "--dataset", "demo", **env)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split("submitted run ")[1].split()[0]
        followed = run_pipelines_cli(tmp_path, "follow", run_id, "--poll-seconds", "0.05", **env)
        assert followed.returncode == 0, followed.stderr
        assert f"run {run_id}: SUCCEEDED ({server.kfp_host}/#/runs/details/{run_id})" in followed.stdout
        scheduled = run_pipelines_cli(tmp_path, "schedule", "--dataset", "demo", "--cron", CRON, **env)
        assert scheduled.returncode == 0 and " created: " in scheduled.stdout, scheduled.stderr
        assert _api_users(server) == {USER} and len(gateway.logins) == 4  # one login per command
        assert PASSWORD not in ran.stderr + submitted.stderr + followed.stderr + scheduled.stderr


def test_an_ldap_account_logs_in_through_dexs_connector_list(tmp_path):
    gateway = Gateway(ldap_users={"jane": ("jane@example.com", "s3cret")})
    with KfpApiServer(gateway=gateway, multi_user=True) as server:
        env = _env(tmp_path, KFP_USERNAME="jane", KFP_PASSWORD="s3cret", KFP_DEX_CONNECTOR="ldap")
        connection = cluster.connect(server.kfp_host, environ=env)
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        # the static user still logs in with the default connector while Dex lists two
        cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        assert gateway.logins == ["jane@example.com", USER]
        assert "jane@example.com" in _api_users(server)
        # the list was shown (Dex has two connectors), and the ldap form was the one posted to
        assert any(r.path == "/dex/auth/ldap/login" and r.method == "POST" for r in server.state.requests)
        with pytest.raises(cluster.ClusterAuthError, match="refused the login of 'jane'.*KFP_PASSWORD"):
            cluster.connect(server.kfp_host, environ=env | {"KFP_PASSWORD": "wrong"})


def test_an_approval_screen_is_approved(tmp_path):
    gateway = Gateway(skip_approval_screen=False)
    with KfpApiServer(gateway=gateway, multi_user=True) as server:
        cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        assert gateway.logins == [USER]
        assert any(r.path == "/dex/approval" and r.method == "POST" for r in server.state.requests)


def test_a_wrong_password_or_connector_is_one_clear_error(tmp_path):
    with KfpApiServer(gateway=Gateway(), multi_user=True) as server:
        with pytest.raises(cluster.ClusterAuthError) as caught:
            cluster.connect(server.kfp_host, environ=_login_env(tmp_path, KFP_PASSWORD="not-it"))
        message = str(caught.value)
        assert (
            "refused the login of 'user@example.com'" in message
            and "KFP_USERNAME and KFP_PASSWORD" in message
        )
        assert "not-it" not in message
        with pytest.raises(
            cluster.ClusterAuthError, match="only the connector 'local'.*KFP_DEX_CONNECTOR=local"
        ):
            cluster.connect(server.kfp_host, environ=_login_env(tmp_path, KFP_DEX_CONNECTOR="ldap"))
        with pytest.raises(cluster.ClusterAuthError, match="KFP_PASSWORD is not set"):
            cluster.connect(server.kfp_host, environ=_env(tmp_path, KFP_USERNAME=USER))
        assert not server.state.api_calls()


def test_a_service_account_token_from_outside_is_refused_with_what_works(tmp_path):
    """m2m-dex-only trusts only Dex's issuer: `kubectl create token` gets 'Jwt issuer is not configured'."""
    token = kubernetes_token(NAMESPACE, "default-editor")
    with KfpApiServer(gateway=Gateway(), multi_user=True) as server:
        with pytest.raises(cluster.ClusterAuthError) as caught:
            cluster.connect(server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=token))
        message = str(caught.value)
        assert "refused the token from KFP_TOKEN" in message
        assert (
            "'https://kubernetes.default.svc.cluster.local' is not one the Kubeflow gateway trusts" in message
        )
        assert "m2m-dex-only" in message and "m2m-dex-and-kind" in message and "inside the cluster" in message
        assert "set KFP_USERNAME and KFP_PASSWORD" in message and "Unset KFP_TOKEN" in message
        assert (
            "create token default-editor" not in message and token not in message
        )  # not the same token again
        proc = run_pipelines_cli(
            tmp_path,
            "submit",
            "--dataset",
            "demo",
            KFP_HOST=server.kfp_host,
            KFP_TOKEN=token,
            KFP_NAMESPACE=NAMESPACE,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "is not one the Kubeflow gateway trusts" in proc.stderr and "KFP_USERNAME" in proc.stderr
        # no credentials at all: the same advice
        with pytest.raises(cluster.ClusterAuthError, match="needs a login.*KFP_USERNAME and KFP_PASSWORD"):
            cluster.connect(server.kfp_host, environ=_env(tmp_path))


def test_tokens_the_gateway_trusts_pass(tmp_path):
    """A Dex-issued JWT passes on every overlay; a Kubernetes one where m2m-dex-and-kind trusts its issuer."""
    sa_token = kubernetes_token(NAMESPACE, "default-editor")
    with KfpApiServer(gateway=Gateway(overlay="m2m-dex-and-kind"), multi_user=True) as server:
        connection = cluster.connect(server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=sa_token))
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        assert _api_users(server) == {f"system:serviceaccount:{NAMESPACE}:default-editor"}
    gateway = Gateway()
    with KfpApiServer(gateway=gateway, multi_user=True) as server:
        connection = cluster.connect(
            server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=gateway.dex_token(USER))
        )
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        assert _api_users(server) == {USER}
        forged = make_jwt("http://dex.auth.svc.cluster.local:5556/dex", {"email": USER}, forged=True)
        with pytest.raises(cluster.ClusterAuthError, match="Jwt verification fails"):
            cluster.connect(server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=forged))


def test_an_expired_session_cookie_names_the_login_that_renews_itself(tmp_path):
    gateway = Gateway()
    with KfpApiServer(gateway=gateway, multi_user=True) as server:
        cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        cookie = next(iter(gateway.sessions))
        connection = cluster.connect(
            server.kfp_host, environ=_env(tmp_path, KFP_COOKIES=f"oauth2_proxy_kubeflow={cookie}")
        )
        assert connection.credentials.source == "KFP_COOKIES" and not connection.credentials.renewable
        gateway.sessions.clear()  # expired
        with pytest.raises(
            cluster.ClusterAuthError, match="session cookie from KFP_COOKIES.*KFP_USERNAME and KFP_PASSWORD"
        ):
            cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)


def test_following_waits_out_5xx_and_dropped_connections(tmp_path):
    with KfpApiServer(gateway=Gateway(), multi_user=True, running_polls=3) as server:
        connection = cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        connection.backoff_s = 0.01
        run = cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        # urllib3 itself retries a GET on a dropped connection 3 times: 5 resets reach our retry
        server.state.faults = ["503", "reset", "reset", "reset", "reset", "reset", "503", "503"]
        assert cluster.wait_for_run(connection, run.run_id, 60, poll_s=0.01) == "SUCCEEDED"
        assert not server.state.faults and server.state.run_polls[run.run_id] == 4


def test_when_following_gives_up_it_says_the_run_goes_on_and_how_to_resume(tmp_path):
    with KfpApiServer(gateway=Gateway(), multi_user=True, running_polls=10**6) as server:
        connection = cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        connection.backoff_s = 0.01
        run = cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        server.state.faults = ["503"] * 1000
        with pytest.raises(cluster.FollowError) as caught:
            cluster.wait_for_run(connection, run.run_id, 60, poll_s=0.01, patience_s=0.3)
        message = str(caught.value)
        assert "503" in message and "The run goes on in the cluster" in message
        assert f"{server.kfp_host}/#/runs/details/{run.run_id}" in message
        assert f"python -m pipelines.run follow {run.run_id}" in message
        assert f"make pipeline-follow RUN={run.run_id}" in message
        # a token that expires while waiting cannot be renewed here: the same way out
        server.state.faults.clear()
        gateway = server.state.gateway
        short = cluster.connect(
            server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=gateway.dex_token(USER, lifetime_s=1))
        )
        time.sleep(1.5)
        with pytest.raises(cluster.FollowError, match=r"(?s)Jwt is expired.*goes on.*pipelines.run follow"):
            cluster.wait_for_run(short, run.run_id, 60, poll_s=0.01)
        # and the resume command is real: it follows the run to its end
        server.state.running_polls = 0
        proc = run_pipelines_cli(
            tmp_path,
            "follow",
            run.run_id,
            "--poll-seconds",
            "0.01",
            KFP_HOST=server.kfp_host,
            **_login_env(tmp_path),
        )
        assert proc.returncode == 0 and f"run {run.run_id}: SUCCEEDED" in proc.stdout, proc.stderr


def test_cli_follow_of_a_failed_run_exits_1_and_needs_a_run_id(tmp_path):
    with KfpApiServer(multi_user=False, final_run_state="FAILED") as server:
        connection = cluster.connect(server.url, environ={"KUBECONFIG": str(tmp_path / "none")})
        run = cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        proc = run_pipelines_cli(
            tmp_path, "follow", run.run_id, "--poll-seconds", "0.01", KFP_HOST=server.url
        )
        assert proc.returncode == 1 and f"run {run.run_id}: FAILED" in proc.stdout
        missing = run_pipelines_cli(tmp_path, "follow", KFP_HOST=server.url)
        assert missing.returncode == 2 and "follow <run-id>" in missing.stderr


def test_make_pipeline_follow_is_the_resume_command():
    import subprocess

    from pipelines.compile import COMPILED as compiled

    root = compiled.parents[1]
    dry = subprocess.run(
        ["make", "-n", "pipeline-follow", "RUN=run-0007"], cwd=root, capture_output=True, text=True
    )
    assert dry.returncode == 0 and "-m pipelines.run follow run-0007" in dry.stdout, dry.stderr
    missing = subprocess.run(["make", "-n", "pipeline-follow"], cwd=root, capture_output=True, text=True)
    assert missing.returncode != 0 and "needs RUN=<run-id>" in missing.stderr


def test_in_a_notebook_the_service_account_token_stays_the_default(tmp_path):
    """The projected token (KFP's default path) wins over a Dex login; through the gateway it is told to
    use the in-cluster address, which does not go through the gateway."""
    token_file = tmp_path / "token"
    token_file.write_text(kubernetes_token(NAMESPACE, "default-editor"))
    cluster_auth.DEFAULT_SA_TOKEN_PATH = str(token_file)
    credentials = cluster.resolve_credentials(None, _login_env(tmp_path))
    assert credentials.token_path == str(token_file) and credentials.dex is None
    with KfpApiServer(gateway=Gateway(), multi_user=True) as server:
        with pytest.raises(cluster.ClusterAuthError) as caught:
            cluster.connect(server.kfp_host, environ=_env(tmp_path))
        assert "KFP_HOST=http://ml-pipeline-ui.kubeflow.svc.cluster.local" in str(caught.value)
        assert server.state.gateway.logins == []


def _self_signed(folder) -> tuple[str, str]:
    """A CA-less certificate for 127.0.0.1 (its own CA bundle), as a gateway with a private CA has."""
    import subprocess

    cert, key = folder / "gateway.crt", folder / "gateway.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_a_gateway_with_a_private_ca_needs_kfp_ssl_ca_cert(tmp_path):
    cert, key = _self_signed(tmp_path)
    with KfpApiServer(tls=(cert, key), gateway=Gateway(), multi_user=True) as server:
        assert server.kfp_host.startswith("https://")
        with pytest.raises(cluster.ClusterAuthError, match="TLS certificate is not trusted.*KFP_SSL_CA_CERT"):
            cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        connection = cluster.connect(server.kfp_host, environ=_login_env(tmp_path, KFP_SSL_CA_CERT=cert))
        cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        assert _api_users(server) == {USER}
        token = server.state.gateway.dex_token(USER)
        with pytest.raises(
            cluster.ClusterError, match="TLS certificate of .* is not trusted.*KFP_SSL_CA_CERT"
        ):
            cluster.connect(server.kfp_host, environ=_env(tmp_path, KFP_TOKEN=token))
        with pytest.raises(cluster.ClusterError, match="KFP_SSL_CA_CERT=.*missing.pem: no such file"):
            cluster.connect(
                server.kfp_host,
                environ=_env(tmp_path, KFP_TOKEN=token, KFP_SSL_CA_CERT=str(tmp_path / "missing.pem")),
            )


def test_a_dex_restart_during_the_renewal_is_waited_out(tmp_path):
    gateway = Gateway()
    with KfpApiServer(gateway=gateway, multi_user=True, running_polls=10**6) as server:
        connection = cluster.connect(server.kfp_host, environ=_login_env(tmp_path))
        connection.backoff_s = 0.05
        run = cluster.submit(connection, {"dataset_name": "demo"}, "demo", package=COMPILED)
        gateway.sessions.clear()  # the session expired: the next poll logs in again, while Dex answers 503 twice
        server.state.faults = ["503:/dex/auth", "503:/dex/auth"]
        server.state.running_polls = server.state.run_polls.get(run.run_id, 0) + 1
        assert cluster.wait_for_run(connection, run.run_id, 60, poll_s=0.01) == "SUCCEEDED"
        assert server.state.faults == [] and gateway.logins == [USER, USER]
        # a wrong password at renewal is not waited out: it stops at once, saying how to resume
        gateway.sessions.clear()
        gateway.users[USER] = "changed"
        server.state.running_polls = 10**6
        with pytest.raises(
            cluster.FollowError, match=r"(?s)refused the login.*goes on.*pipelines.run follow"
        ):
            cluster.wait_for_run(connection, run.run_id, 60, poll_s=0.01)
