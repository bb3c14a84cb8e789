"""Each step's disk on a cluster: compiled with SAM2_STEP_SCRATCH=<size>, every step works in an emptyDir of
that sizeLimit at /scratch (SAM2_SCRATCH, TMPDIR), so the kubelet evicts a step that outgrows it alone
instead of the node's other pods under disk pressure (kfp-kubernetes 2.17 empty_dir_mount; the KFP driver
adds the volume, kubeflow/pipelines 2.16.1 backend/src/v2/driver/k8s.go). Without it nothing changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from pod_security import RESTRICTED_VOLUME_TYPES

ROOT = Path(__file__).resolve().parents[1]


def _compile(tmp_path: Path, **env: str) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAM2_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--output", str(out)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipeline, platform = list(yaml.safe_load_all(out.read_text()))[:2]
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_step_works_in_a_bounded_scratch_volume(tmp_path):
    pipeline, executors = _compile(tmp_path, SAM2_STEP_SCRATCH="60Gi")
    assert "emptyDir" in RESTRICTED_VOLUME_TYPES
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        if name == "exec-deploy-model":  # it only calls the Kubernetes API: no data, no scratch
            continue
        assert executors[name]["emptyDirMounts"] == [
            {"volumeName": "scratch", "mountPath": "/scratch", "sizeLimit": "60Gi"}
        ], name
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env["SAM2_SCRATCH"] == "/scratch" and env["TMPDIR"] == "/scratch", name


def test_without_the_setting_the_steps_are_unchanged(tmp_path):
    pipeline, executors = _compile(tmp_path)
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        assert "emptyDirMounts" not in executors[name], name
        env = {e["name"] for e in executor["container"].get("env", [])}
        assert not {"SAM2_SCRATCH", "TMPDIR"} & env, name
