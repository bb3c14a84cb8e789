"""The oldest KFP backend the compiled pipeline runs on, checked with that release's own protos.

pipelines.cluster.MIN_BACKEND_VERSION is 2.16.0: every step's Kubernetes executor config sets
`securityContext`, which kubeflow/pipelines first has at tag 2.16.0
(kubernetes_platform/proto/kubernetes_executor_config.proto: `SecurityContext security_context = 18`,
absent at 2.15.0), and the API server reads the config strictly. The protos are the `kfp-pipeline-spec`
and `kfp-kubernetes` releases of each version, installed apart from the venv (tests/kfp_protos.py).
"""

from __future__ import annotations

import pytest
import yaml
from kfp_api_server import PROTO_VERSION, KfpApiServer
from kfp_protos import parse_errors

from pipelines import cluster
from pipelines.compile import COMPILED


def _previous(version: str) -> str:
    major, minor, _ = (int(p) for p in version.split("."))
    return f"{major}.{minor - 1}.0"


def test_the_compiled_pipeline_parses_with_the_minimum_backends_protos():
    assert cluster.MIN_BACKEND_VERSION == "2.16.0"
    assert parse_errors(COMPILED, cluster.MIN_BACKEND_VERSION) == []


def test_the_release_before_the_minimum_refuses_it_for_securitycontext():
    """So the minimum is tight: 2.15.0's protos refuse every step's config, for securityContext alone."""
    errors = parse_errors(COMPILED, _previous(cluster.MIN_BACKEND_VERSION))
    executors = list(yaml.safe_load_all(COMPILED.read_text()))[1]["platforms"]["kubernetes"][
        "deploymentSpec"
    ]["executors"]
    refused = [e for e in errors if e.startswith("KubernetesExecutorConfig ")]
    assert len(refused) == len(executors) and all("securityContext" in e for e in refused), errors


def test_a_field_newer_than_the_minimum_fails_the_check(tmp_path):
    """The check would catch the next such field: one the minimum's protos lack is reported by name."""
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    next(iter(executors.values()))["fieldFromTheFuture"] = {}
    newer = tmp_path / "newer.yaml"
    newer.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    errors = parse_errors(newer, cluster.MIN_BACKEND_VERSION)
    assert len(errors) == 1 and "fieldFromTheFuture" in errors[0]


@pytest.mark.parametrize(("version", "refused"), [("2.15.0", True), ("2.16.0", False), ("2.17.0", False)])
def test_connect_refuses_an_older_backend_naming_the_minimum(tmp_path, version, refused):
    with KfpApiServer(multi_user=False, version=version) as server:
        env = {"KUBECONFIG": str(tmp_path / "none")}
        if refused:
            with pytest.raises(
                cluster.ClusterError, match=r"is 2\.15\.0; this pipeline needs 2\.16\.0 or newer"
            ):
                cluster.connect(server.url, environ=env)
            assert not server.state.api_calls("POST")
        else:
            assert cluster.connect(server.url, environ=env).backend_version == version
    assert PROTO_VERSION.startswith("2.")  # the fake says which protos it parses with (healthz tag_name)
