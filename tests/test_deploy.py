"""The deploy step against a Kubernetes API with KServe (tests/fake_kserve.py over HTTP, the real
`kubernetes` client): create on the first champion, patch on a later one, untouched for a challenger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_cluster import api_error, serve
from fake_kserve import CRD, FakeKServeCluster

from sam2.serving.deployment import (
    DeployError,
    ServingTarget,
    deploy_champion,
    render_inferenceservice,
    version_model_uri,
)

NS = "kubeflow-user"
pytestmark = pytest.mark.skipif(not CRD.exists(), reason=f"the InferenceService CRD is not at {CRD}")


@pytest.fixture
def cluster():
    fake = FakeKServeCluster()
    server, api_client = serve(fake)
    yield fake, api_client
    server.shutdown()


TARGET = ServingTarget(
    image="registry.example.com/sam2:1",
    mlflow_tracking_uri="http://mlflow.team:5000",
    s3_endpoint_url="http://s3.team:9000",
    s3_secret_name="team-s3",
)


def test_the_rendered_object_pins_the_version_and_keeps_the_manifest(tmp_path):
    import jsonschema
    from fake_kserve import isvc_schema
    from pod_security import restricted_violations

    for variant in ("gpu", "cpu"):
        isvc = render_inferenceservice("models:/sam2-demo/3", ServingTarget(name="sam2-x", variant=variant))
        jsonschema.validate(isvc, isvc_schema())
        (container,) = isvc["spec"]["predictor"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["SAM2_MODEL_URI"]["value"] == "models:/sam2-demo/3" and isvc["metadata"]["name"] == "sam2-x"
        )
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) is (variant == "gpu")
        pod = {
            k: v
            for k, v in isvc["spec"]["predictor"].items()
            if k in ("containers", "securityContext", "volumes")
        }
        assert restricted_violations(pod) == []
    isvc = render_inferenceservice("models:/sam2-demo/3", TARGET)
    (container,) = isvc["spec"]["predictor"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == TARGET.image
    assert env["MLFLOW_TRACKING_URI"]["value"] == TARGET.mlflow_tracking_uri
    assert env["S3_ENDPOINT_URL"]["value"] == env["MLFLOW_S3_ENDPOINT_URL"]["value"] == TARGET.s3_endpoint_url
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "team-s3"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sam2-mlflow-credentials"


def test_first_champion_creates_a_later_one_patches_a_challenger_leaves_it(cluster):
    fake, api_client = cluster
    first = deploy_champion(api_client, NS, "champion", "sam2-demo/1", TARGET)
    assert first.action == "created" and fake.served_uri("sam2") == "models:/sam2-demo/1"
    assert fake.isvcs["sam2"]["metadata"]["generation"] == 1
    uid = fake.isvcs["sam2"]["metadata"]["uid"]
    fake.ready("sam2")

    stayed = deploy_champion(api_client, NS, "challenger", "sam2-demo/2", TARGET)
    assert stayed.action == "skipped" and "stayed challenger" in stayed.reason
    assert (
        fake.served_uri("sam2") == "models:/sam2-demo/1" and fake.isvcs["sam2"]["metadata"]["generation"] == 1
    )

    calls = len(fake.verbs)
    later = deploy_champion(api_client, NS, "champion", "sam2-demo/3", TARGET)
    assert later.action == "patched" and "sam2-demo/1" in later.reason
    assert fake.verbs[calls:] == [("get", "sam2"), ("patch", "sam2")], "an update, never a delete"
    stored = fake.isvcs["sam2"]
    assert fake.served_uri("sam2") == "models:/sam2-demo/3"
    assert stored["metadata"]["generation"] == 2, "a new pod template: KServe rolls out a new revision"
    assert stored["metadata"]["uid"] == uid, "the same object, updated in place"
    assert stored["metadata"]["annotations"]["sam2-kubeflow/model-uri"] == "models:/sam2-demo/3"
    assert stored["status"]["observedGeneration"] == 1, "the old revision serves until the new one is ready"

    again = deploy_champion(api_client, NS, "champion", "sam2-demo/3", TARGET)
    assert again.action == "unchanged" and fake.isvcs["sam2"]["metadata"]["generation"] == 2


def test_another_run_creating_it_first_is_patched_not_an_error(cluster):
    fake, api_client = cluster
    deploy_champion(api_client, NS, "champion", "sam2-demo/4", TARGET)
    fake.fail_next["get"] = [api_error(404, "NotFound")]  # it did not exist when this run looked
    result = deploy_champion(api_client, NS, "champion", "sam2-demo/5", TARGET)
    assert result.action == "patched" and fake.served_uri("sam2") == "models:/sam2-demo/5"


def test_a_cluster_without_kserve_or_rights_is_a_clear_error(cluster):
    fake, api_client = cluster
    fake.served = frozenset({"pytorchjobs"})
    with pytest.raises(DeployError, match="is KServe installed.*deploy=false"):
        deploy_champion(api_client, NS, "champion", "sam2-demo/1", TARGET)
    fake.served = FakeKServeCluster.served
    fake.fail_next["get"] = [api_error(403, "Forbidden", message="cannot get resource inferenceservices")]
    with pytest.raises(DeployError, match="k8s/rbac.yaml"):
        deploy_champion(api_client, NS, "champion", "sam2-demo/1", TARGET)
    with pytest.raises(ValueError, match="model_version"):
        version_model_uri("sam2-demo@champion")


def test_the_component_deploys_through_kfp_local(cluster, tmp_path, monkeypatch):
    """components/deploy.py run by kfp.local in a subprocess, reaching the API through a kube config."""
    from pipelines.local_run import import_kfp_local

    fake, api_client = cluster
    host = api_client.configuration.host
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": host}}],
                "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    local = import_kfp_local()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    from components.deploy import deploy_model

    task = deploy_model(decision="champion", model_version="sam2-demo/7", serving_variant="cpu")
    assert task.output.startswith("created:") and fake.served_uri("sam2") == "models:/sam2-demo/7"
    (container,) = fake.isvcs["sam2"]["spec"]["predictor"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    task = deploy_model(decision="challenger", model_version="sam2-demo/8")
    assert task.output.startswith("skipped:") and fake.served_uri("sam2") == "models:/sam2-demo/7"


def test_rbac_grants_the_deploy_step_exactly_what_it_calls():
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "k8s" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "sam2-pipeline"]
    rules = [r for r in role["rules"] if "serving.kserve.io" in r["apiGroups"]]
    assert rules == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "patch"],
        }
    ]
