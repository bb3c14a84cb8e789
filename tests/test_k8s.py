"""The k8s/ manifests are valid Kubernetes objects, and the PyTorchJob obeys the operator's CRD and webhook."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam2.launch.pytorchjob import admission_problems

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMAS = ROOT.parent / "shared" / "schemas"
CRD = SCHEMAS / "kubeflow.org_pytorchjobs.yaml"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml"))
# The project's own image: each team builds and pushes it (`make image`) and sets its tag in
# kustomization.yaml / the compiled pipeline, so no digest can be written here ahead of the build.
OWN_IMAGE = "ghcr.io/sam2-kubeflow/sam2-kubeflow"
# `name:tag@sha256:<digest>`: the tag for readers, the digest for the kubelet.
TAG_AND_DIGEST = re.compile(r"^[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*@sha256:[0-9a-f]{64}$")


def _kubernetes_validate() -> str:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.skip("kubernetes-validate is not installed in this venv (`make setup` installs it)")
    return str(exe)


def pytorchjob_schema() -> dict:
    if not CRD.exists():
        pytest.skip(f"the PyTorchJob CRD is not at {CRD} (../shared/schemas is absent in this clone)")
    return _load_schema()


@functools.cache
def _load_schema() -> dict:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def test_the_expected_manifests_are_present():
    assert {"pytorchjob.yaml", "rbac.yaml", "mlflow.yaml", "minio.yaml", "kustomization.yaml"} <= set(
        MANIFESTS
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_kubernetes_validate_strict(name):
    proc = subprocess.run(
        [_kubernetes_validate(), "--strict", str(K8S / name)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path):
    """Guards the check above: the validator really is strict."""
    bad = yaml.safe_load((K8S / "rbac.yaml").read_text().split("---")[0])
    bad["spec"] = {"bogus": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([_kubernetes_validate(), "--strict", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_pytorchjob_matches_the_crd_schema():
    import jsonschema

    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    jsonschema.validate(job, pytorchjob_schema())


def test_crd_schema_check_catches_a_wrong_type():
    import jsonschema

    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    job["spec"]["runPolicy"]["backoffLimit"] = "three"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, pytorchjob_schema())


def test_pytorchjob_obeys_the_webhook_rules():
    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    assert admission_problems(job) == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda j: j["metadata"].update(name="Sam2_Job"), "DNS-1035"),
        (lambda j: j["spec"].update(nprocPerNode=1), "nprocPerNode"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2), "Master replicas"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0), "Worker replicas"),
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
                name="trainer"
            ),
            "no container named",
        ),
        (
            lambda j: (j["spec"].update(elasticPolicy={}), j["spec"]["pytorchReplicaSpecs"].pop("Worker")),
            "elasticPolicy",
        ),
    ],
)
def test_webhook_rules_reject_what_the_operator_rejects(mutate, expected):
    job = yaml.safe_load((K8S / "pytorchjob.yaml").read_text())
    mutate(job)
    assert any(expected in p for p in admission_problems(job))


def _pod_specs(job: dict) -> list[dict]:
    return [r["template"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


def test_pytorchjob_operational_settings():
    """What the training needs on a cluster: GPUs, a big /dev/shm, secrets by reference, no Istio, resume."""
    text = (K8S / "pytorchjob.yaml").read_text()
    job = yaml.safe_load(text)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["runPolicy"]["backoffLimit"] >= 1
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        assert replica["restartPolicy"] == "ExitCode", role
    for template in _pod_specs(job):
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        (container,) = template["spec"]["containers"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        shm = next(name for name, path in mounts.items() if path == "/dev/shm")
        assert volumes[shm]["emptyDir"]["medium"] == "Memory"
        for item in container["env"]:
            if "SECRET" in item["name"] or "ACCESS_KEY" in item["name"]:
                assert "value" not in item and "secretKeyRef" in item["valueFrom"], item
    assert "AWS_SECRET_ACCESS_KEY=" not in text.replace("--from-literal=AWS_SECRET_ACCESS_KEY=...", "")


def test_rbac_is_namespaced_and_least_privilege():
    """Exactly what the steps need: the launcher's PyTorchJob and pod rules, the deploy step's
    InferenceService rule, Argo's executor rule and the KFP driver/launcher ConfigMap and artifact-store
    Secret (sources in k8s/rbac.yaml); no wildcards, no other Secret, no ClusterRole."""
    docs = list(yaml.safe_load_all((K8S / "rbac.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding"}, "a ClusterRole would reach other namespaces"
    (role,) = [d for d in docs if d["kind"] == "Role"]
    granted = {
        (g, r, v, name)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for name in rule.get("resourceNames") or ["(any)"]
    }
    assert granted == {
        *{("kubeflow.org", "pytorchjobs", v, "(any)") for v in ("create", "get", "delete")},
        *{("trainer.kubeflow.org", "trainjobs", v, "(any)") for v in ("create", "get", "patch", "delete")},
        ("trainer.kubeflow.org", "trainingruntimes", "create", "(any)"),
        ("", "pods", "get", "(any)"),
        ("", "pods", "list", "(any)"),
        ("", "pods/log", "get", "(any)"),
        ("argoproj.io", "workflowtaskresults", "create", "(any)"),
        ("argoproj.io", "workflowtaskresults", "patch", "(any)"),
        ("", "configmaps", "get", "kfp-launcher"),
        ("", "secrets", "get", "mlpipeline-minio-artifact"),
        # the deploy step (sam2/serving/deployment.py): read, create, patch the InferenceService
        *{("serving.kserve.io", "inferenceservices", v, "(any)") for v in ("get", "create", "patch")},
    }
    assert all("*" not in item for entry in granted for item in entry)
    # the one Secret KFP's launcher reads (artifact store), by name, get only: no list, no other Secret
    assert {entry for entry in granted if entry[1] == "secrets"} == {
        ("", "secrets", "get", "mlpipeline-minio-artifact")
    }
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "sam2-pipeline",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sam2-pipeline"}]


def test_rbac_service_account_is_the_one_runs_are_submitted_with():
    from pipelines.cluster import DEFAULT_SERVICE_ACCOUNT

    (account,) = [
        d for d in yaml.safe_load_all((K8S / "rbac.yaml").read_text()) if d["kind"] == "ServiceAccount"
    ]
    assert account["metadata"]["name"] == DEFAULT_SERVICE_ACCOUNT


def test_kustomization_lists_existing_files():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).exists(), res


def test_no_literal_secret_in_any_manifest():
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc.get("kind") != "Secret", f"{name} carries a Secret; create it with kubectl instead"


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_admit_exactly_the_projects_pods_to_minio_and_mlflow():
    """The pods the policies select are the servers', on their container ports; the pods they admit carry
    the label the pipeline's steps and the PyTorchJob's pods get (pipelines/sam2_finetune.py,
    k8s/pytorchjob.yaml), so neither side can drift without this failing."""
    from sam2.launch.pytorchjob import PyTorchJobSpec, render_pytorchjob

    policies = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text())
    }
    assert set(policies) == {"minio", "mlflow"}
    job = render_pytorchjob(PyTorchJobSpec(name="j", image="i:1", args=[], num_nodes=2))
    job_pods = [r["template"]["metadata"]["labels"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    pipeline, platform = list(yaml.safe_load_all((ROOT / "pipelines" / "sam2_finetune.yaml").read_text()))[:2]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    step_pods = [executors[name]["podMetadata"]["labels"] for name in pipeline["deploymentSpec"]["executors"]]
    for name, policy in policies.items():
        (deployment,) = [
            d for d in yaml.safe_load_all((K8S / f"{name}.yaml").read_text()) if d["kind"] == "Deployment"
        ]
        server = deployment["spec"]["template"]
        assert _matches(policy["spec"]["podSelector"], server["metadata"]["labels"]), name
        ports = {p["containerPort"] for c in server["spec"]["containers"] for p in c["ports"]}
        (rule,) = policy["spec"]["ingress"]
        assert {p["port"] for p in rule["ports"]} == ports, name
        (source,) = rule["from"]
        assert set(source) == {"podSelector"}, "this namespace only"
        for labels in job_pods + step_pods:
            assert _matches(source["podSelector"], labels), (name, labels)
        assert not _matches(source["podSelector"], {"app": "notebook"}), "others are refused"


def _container_images(node) -> list[str]:
    """Every container's image in a manifest object, wherever it nests its pod template."""
    if isinstance(node, list):
        return [image for item in node for image in _container_images(item)]
    if not isinstance(node, dict):
        return []
    images = []
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            images += [c["image"] for c in value if isinstance(c, dict) and "image" in c]
        images += _container_images(value)
    return images


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def test_every_third_party_image_is_pinned_by_tag_and_digest():
    """A tag can be moved to other content; a digest cannot (checkov CKV_K8S_43, no skip left for it).
    Only the image the team builds itself is referenced by tag."""
    images = {
        (name, image)
        for name in MANIFESTS
        for image in _container_images(list(yaml.safe_load_all((K8S / name).read_text())))
    }
    repositories = {_repository(image) for _, image in images}
    # the walk really reaches the pod templates: MinIO, and the project's image (the training job, and
    # MLflow, which needs the image's boto3 to show S3 artifacts: test_the_mlflow_ui_shows_...)
    assert {"quay.io/minio/minio", OWN_IMAGE} <= repositories, repositories
    assert {_repository(i) for n, i in images if n == "mlflow.yaml"} == {OWN_IMAGE}
    unpinned = [(n, i) for n, i in images if _repository(i) != OWN_IMAGE and not TAG_AND_DIGEST.match(i)]
    assert unpinned == [], "pin these as name:tag@sha256:<digest>"
    for name in MANIFESTS:
        assert "CKV_K8S_43" not in (K8S / name).read_text(), f"{name} still skips the digest check"


def test_mlflow_server_answers_the_host_the_pipeline_calls_it_by():
    """MLflow's server answers a Host header outside --allowed-hosts (default: localhost and private IPs)
    with 403, /health excepted, so the pod would look healthy while every client failed. The pipeline's
    default tracking URI, the namespaced Service names and a port-forward must get through, any other host
    must not. The container's args are parsed by MLflow's own CLI and matched with its own rule
    (mlflow/cli/__init__.py, mlflow/server/security_utils.py: is_allowed_host_header)."""
    from urllib.parse import urlsplit

    from mlflow.cli import server
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    (deployment,) = [
        d for d in yaml.safe_load_all((K8S / "mlflow.yaml").read_text()) if d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(container["args"])).params
    allowed = (
        [host.strip() for host in params["allowed_hosts"].split(",")]
        if params["allowed_hosts"]
        else get_default_allowed_hosts()
    )
    pipeline = next(yaml.safe_load_all((ROOT / "pipelines" / "sam2_finetune.yaml").read_text()))
    tracking_uri = pipeline["root"]["inputDefinitions"]["parameters"]["mlflow_tracking_uri"]["defaultValue"]
    namespace = "team-b"  # any profile namespace: `kubectl apply -k k8s/ -n team-b`
    port = params["port"]
    for host in (
        urlsplit(tracking_uri).netloc,
        f"mlflow.{namespace}.svc:{port}",
        f"mlflow.{namespace}.svc.cluster.local:{port}",
        "localhost:8080",  # kubectl port-forward svc/mlflow 8080:5000
    ):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, f"mlflow.attacker.example:{port}")


# -- any profile namespace ------------------------------------------------------------------------------------


def _kustomize(path: Path) -> list[dict]:
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_sets_no_namespace_so_kubectl_n_chooses_the_profile():
    """`kubectl apply -k k8s/ -n <ns>` puts an object without a namespace into <ns>; one that the
    kustomization had pinned would be refused ("the namespace from the provided object ... does not
    match"). RoleBinding subjects without one are the binding's namespace (RBAC's rule for
    ServiceAccount subjects of a RoleBinding)."""
    docs = _kustomize(K8S)
    assert "namespace" not in yaml.safe_load((K8S / "kustomization.yaml").read_text())
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Deployment", "Service"} <= kinds
    for doc in docs:
        assert "namespace" not in doc["metadata"], (doc["kind"], doc["metadata"]["name"])
        for subject in doc.get("subjects", []):
            assert "namespace" not in subject, doc["metadata"]["name"]


def test_an_overlay_puts_every_object_and_subject_into_its_namespace(tmp_path):
    """The documented way to pin a namespace (docs/cluster-operations.md): an overlay with `namespace:`."""
    overlay = tmp_path / "team-b"
    overlay.mkdir()
    base = os.path.relpath(K8S, overlay)  # kustomize takes a base by relative path only
    (overlay / "kustomization.yaml").write_text(f"namespace: team-b\nresources:\n  - {base}\n")
    docs = _kustomize(overlay)
    assert docs and all(d["metadata"]["namespace"] == "team-b" for d in docs)
    subjects = [s for d in docs for s in d.get("subjects", [])]
    assert subjects and all(s["namespace"] == "team-b" for s in subjects)


# -- MLflow shows the run artifacts ----------------------------------------------------------------------------


def _deployment(name: str) -> dict:
    (deployment,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d["kind"] == "Deployment"]
    return deployment


def test_mlflows_pod_may_reach_minio_with_the_s3_credentials():
    pod = _deployment("mlflow.yaml")["spec"]["template"]
    policies = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text())
    }
    (rule,) = policies["minio"]["spec"]["ingress"]
    assert _matches(rule["from"][0]["podSelector"], pod["metadata"]["labels"]), "MinIO's policy admits MLflow"
    (container,) = pod["spec"]["containers"]
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secrets == {
        "AWS_ACCESS_KEY_ID": "sam2-s3-credentials",
        "AWS_SECRET_ACCESS_KEY": "sam2-s3-credentials",
    }
    # The server reads S3 with boto3: the image installs it and the full mlflow (the server's Flask app).
    pins = {
        line.split("==")[0].lower()
        for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    assert {"mlflow", "boto3"} <= pins and _repository(container["image"]) == OWN_IMAGE


@pytest.fixture
def mlflow_as_deployed(s3_server, s3_store, tmp_path):
    """`mlflow server` with k8s/mlflow.yaml's command, args and env; only what a laptop must change is
    changed: the listen address and the SQLite file (the pod's volume), the S3 endpoint (MinIO's Service)
    and the credentials (the Secret). The bucket of --default-artifact-root is created on the test S3."""
    import time
    import urllib.request
    from urllib.parse import urlsplit

    from sam2.utils.network import free_port

    (container,) = _deployment("mlflow.yaml")["spec"]["template"]["spec"]["containers"]
    port = free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp_path}/mlflow.db",
    }
    args = []
    for arg in container["args"]:
        key = arg.split("=", 1)[0]
        args.append(f"{key}={local[key]}" if key in local else arg)
    root = next(a.split("=", 1)[1] for a in args if a.startswith("--default-artifact-root="))
    s3_store.ensure_bucket(urlsplit(root).netloc)
    # Nothing S3 from this process: only what the manifest passes (the Secret's keys by reference).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "MLFLOW_"))}
    secret = {"sam2-s3-credentials": {k: v for k, v in s3_server.env().items() if k.startswith("AWS_")}}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret[ref["name"]][ref["key"]]
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_server.endpoint_url
    env["HOME"] = str(tmp_path)
    command = [str(Path(sys.executable).with_name(container["command"][0])), *container["command"][1:]]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([*command, *args, "--workers=1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start in 240 s"
                time.sleep(1)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_mlflow_ui_shows_the_artifacts_a_pipeline_step_wrote_to_s3(
    mlflow_as_deployed, s3_env, monkeypatch
):
    """A step logs a report the way the promote step does (the client writes to S3 itself); the UI's own
    calls then list and fetch it through the server (mlflow/server/handlers.py: the ajax artifacts list and
    /get-artifact), which reads S3 with the deployment's settings."""
    import json
    import urllib.request

    import mlflow

    url, root = mlflow_as_deployed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env["S3_ENDPOINT_URL"])
    with mlflow.start_run() as run:
        mlflow.log_text("# J&F 71.3\n", "report/report.md")
    assert run.info.artifact_uri.startswith(root + "/"), "stored under the manifest's artifact root in S3"
    listing = f"{url}/ajax-api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}&path=report"
    with urllib.request.urlopen(listing, timeout=30) as response:
        files = json.load(response)["files"]
    assert [f["path"] for f in files] == ["report/report.md"]
    fetch = f"{url}/get-artifact?path=report/report.md&run_uuid={run.info.run_id}"
    with urllib.request.urlopen(fetch, timeout=30) as response:
        assert response.read() == b"# J&F 71.3\n"
