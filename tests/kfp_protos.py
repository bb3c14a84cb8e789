"""Parse a compiled pipeline with the protos of a given KFP release, as that release's API server does.

The project's venv holds the newest `kfp-pipeline-spec` / `kfp-kubernetes`; an older release's protos are
installed apart (`pip install --no-deps --target .cache/kfp_protos/<version>`, as tests/sam2_oracle.py
installs the oracle) and used in a subprocess whose PYTHONPATH starts with that folder. There `kfp` and
`kfp.kubernetes` are bare namespace modules over the installed folder, so only the generated `_pb2`
modules load, never the venv's kfp (whose own protos would otherwise win).

The parse is strict as the backend's (backend/src/v2/compiler/argocompiler/container.go and
backend/src/apiserver/template/v2_template.go unmarshal with protojson, unknown fields refused): the
PipelineSpec, the PlatformSpec, and each Kubernetes executor config as KubernetesExecutorConfig.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KFP_PROTOS_CACHE", REPO_ROOT / ".cache" / "kfp_protos"))
_PIP_TIMEOUT_S = 240

_PARSE = r"""
import json, sys, types
from pathlib import Path

root = Path(sys.argv[1])
for name, folder in (("kfp", root / "kfp"), ("kfp.kubernetes", root / "kfp" / "kubernetes")):
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s

assert pipeline_spec_pb2.__file__.startswith(str(root)), pipeline_spec_pb2.__file__
docs = json.loads(sys.stdin.read())
errors = []
def parse(what, value, message):
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as err:
        errors.append(f"{what}: {err}")
parse("PipelineSpec", docs[0], pipeline_spec_pb2.PipelineSpec())
for executor, config in (docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items() if len(docs) > 1 else []):
    parse(f"KubernetesExecutorConfig {executor}", config, k8s.KubernetesExecutorConfig())
if len(docs) > 1:
    parse("PlatformSpec", docs[1], pipeline_spec_pb2.PlatformSpec())
print(json.dumps(errors))
"""


def install_protos(version: str) -> Path:
    """The folder holding kfp-pipeline-spec and kfp-kubernetes `version`; skips the test if pip cannot."""
    target = CACHE / version
    if (target / ".complete").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f"{version}-", dir=CACHE))
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(staging),
            f"kfp-pipeline-spec=={version}",
            f"kfp-kubernetes=={version}",
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            shutil.rmtree(staging, ignore_errors=True)
            output = getattr(err, "stderr", "") or ""
            pytest.skip(f"cannot install the KFP {version} protos ({' '.join(cmd[3:])}): {output[-500:]}")
        (staging / ".complete").write_text(version)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def parse_errors(package: str | os.PathLike[str], version: str) -> list[str]:
    """What KFP `version`'s protos refuse in the compiled `package` (empty: it parses)."""
    root = install_protos(version)
    docs = list(yaml.safe_load_all(Path(package).read_text()))
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE, str(root)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"parsing with the KFP {version} protos crashed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
