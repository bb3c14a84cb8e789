"""k8s/inferenceservice.yaml (GPU) and k8s/inferenceservice-cpu.yaml obey KServe's InferenceService CRD
(v0.18.1, ../shared/schemas/kserve-v0.18.1, `spec.versions[name=v1beta1]`), run restricted pods, take the
pipeline's Secrets by reference, scale to zero, and start the server this package ships."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import pytest
import yaml
from pod_security import restricted_violations

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT.parent / "shared" / "schemas" / "kserve-v0.18.1" / "serving.kserve.io_inferenceservices.yaml"
VARIANTS = {"inferenceservice.yaml": True, "inferenceservice-cpu.yaml": False}  # file -> has a GPU
# The PodSpec fields KServe inlines into a predictor (the rest: replicas, scaling, the model spec).
POD_FIELDS = {
    "containers",
    "initContainers",
    "volumes",
    "securityContext",
    "hostNetwork",
    "hostPID",
    "hostIPC",
}


@functools.cache
def isvc_schema() -> dict:
    if not CRD.exists():
        pytest.skip(f"the InferenceService CRD is not at {CRD} (../shared/schemas is absent in this clone)")
    crd = yaml.safe_load(CRD.read_text())
    (v1beta1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return v1beta1["schema"]["openAPIV3Schema"]


def load(name: str) -> dict:
    (doc,) = list(yaml.safe_load_all((ROOT / "k8s" / name).read_text()))
    return doc


def predictor_pod(isvc: dict) -> dict:
    return {k: v for k, v in isvc["spec"]["predictor"].items() if k in POD_FIELDS}


@pytest.mark.parametrize("name", VARIANTS)
def test_matches_the_kserve_crd(name):
    isvc = load(name)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    jsonschema.validate(isvc, isvc_schema())


def test_the_crd_check_catches_a_wrong_type():
    bad = load("inferenceservice.yaml")
    bad["spec"]["predictor"]["minReplicas"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, isvc_schema())


@pytest.mark.parametrize("name", VARIANTS)
def test_pods_are_restricted(name):
    pod = predictor_pod(load(name))
    assert restricted_violations(pod) == []
    loose = copy.deepcopy(pod)
    del loose["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    assert restricted_violations(loose), "the checker sees a missing setting"


@pytest.mark.parametrize("name", VARIANTS)
def test_secrets_are_the_pipelines_and_referenced(name):
    from pipelines.sam2_finetune import MLFLOW_SECRET, MLFLOW_SECRET_KEYS, S3_SECRET_KEYS, sam2_finetune

    s3_secret = sam2_finetune.component_spec.inputs["s3_secret_name"].default
    (container,) = load(name)["spec"]["predictor"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for key in (*S3_SECRET_KEYS, *MLFLOW_SECRET_KEYS):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert "value" not in env[key]
        expected = MLFLOW_SECRET if key in MLFLOW_SECRET_KEYS else s3_secret
        assert ref["name"] == expected and ref["key"] == key
        assert ref.get("optional", False) == (key in MLFLOW_SECRET_KEYS), "MLflow's login is optional"
    for name_, entry in env.items():
        if any(word in name_ for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")):
            assert "valueFrom" in entry, name_
    defaults = sam2_finetune.component_spec.inputs
    assert env["MLFLOW_TRACKING_URI"]["value"] == defaults["mlflow_tracking_uri"].default
    assert env["S3_ENDPOINT_URL"]["value"] == defaults["s3_endpoint_url"].default
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == env["S3_ENDPOINT_URL"]["value"]


@pytest.mark.parametrize(("name", "gpu"), VARIANTS.items())
def test_scales_to_zero_on_knative_and_sizes_the_pod(name, gpu):
    isvc = load(name)
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert predictor["minReplicas"] == 0 and predictor["maxReplicas"] >= 1
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    resources = container["resources"]
    assert ("nvidia.com/gpu" in resources["limits"]) is gpu
    assert ("nvidia.com/gpu" in resources["requests"]) is gpu
    # Serving writes only to the scratch volume; its size bounds the staged frames and the model.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TMPDIR"].startswith("/scratch") and "/scratch" in mounts


@pytest.mark.parametrize("name", VARIANTS)
def test_starts_this_packages_server_for_the_champion(name):
    from sam2.serving.__main__ import build_parser

    (container,) = load(name)["spec"]["predictor"]["containers"]
    assert container["command"] == ["python", "-m", "sam2.serving"]
    args, unknown = build_parser().parse_known_args(container["args"])
    assert unknown == [] and args.model_name == "sam2" and args.http_port == 8080
    assert [p["containerPort"] for p in container["ports"]] == [args.http_port]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SAM2_MODEL_URI"] == "models:/sam2-demo@champion"


@pytest.mark.parametrize("name", VARIANTS)
def test_network_policies_admit_the_serving_pods(name):
    labels = load(name)["spec"]["predictor"]["labels"]
    for policy in yaml.safe_load_all((ROOT / "k8s" / "networkpolicy.yaml").read_text()):
        (rule,) = policy["spec"]["ingress"]
        (source,) = rule["from"]
        wanted = source["podSelector"]["matchLabels"]
        assert all(labels.get(k) == v for k, v in wanted.items()), policy["metadata"]["name"]
