"""validate and split are cached on the data set's content: no per-run value reaches their KFP cache keys.

The rule is KFP's own (kubeflow/pipelines, backend/src/v2/cacheutils/cache.go, `GenerateCacheKey`, called
from backend/src/v2/driver/cache.go `getFingerPrint`; the key message is api/v2alpha1/cache_key.proto).
The fingerprint is the SHA-256 of the JSON of:

- `inputArtifactNames`: per input artifact, the MLMD artifact's *name*, which is its MLMD id
  (backend/src/v2/metadata/converter.go, `toRuntimeArtifact`: `Name: strconv.FormatInt(artifact.GetId())`).
  A step that runs makes new output artifacts, so an artifact from a step that is not cached is new in
  every run. A cache hit re-links the cached execution's own output artifacts
  (driver/cache.go `reuseCachedOutputs` -> `collectOutputArtifactMetadataFromCache`), so an artifact from a
  cached step whose key is content-only keeps its id from run to run.
- `input_parameter_values`: each input parameter's resolved *value* (a run-id placeholder resolves to the
  run's id; a value produced upstream is as stable as what produced it).
- `outputArtifactsSpec` (name, type, static metadata; the URI is wiped) and `outputParametersSpec` (types).
- `containerSpec`: image, command + args as written in the spec (unresolved), PVC names.

Unless `cachingOptions.cacheKey` is set, in which case only that string and the component name are hashed.
The checker below walks the compiled spec with those rules; the toy pipelines show it catches each way a
per-run value can get in.
"""

# No `from __future__ import annotations`: kfp reads the components' annotations as objects.

import re
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Output

from pipelines.compile import COMPILED

CONTENT_KEYED_STEPS = ("validate-dataset", "split-dataset")
# Output parameters that are a function of the data's content although their step always runs: extract's
# return value is the data set version, a hash of the manifest (components/extract_frames.py; tested in
# tests/test_data_extraction.py and tests/test_components.py: the same input gives the same version).
CONTENT_OUTPUTS = {("extract-frames", "Output")}
# Any `{{$...}}` placeholder left in a constant is resolved by the driver per run (job id, job name, task
# id, create/schedule time).
PLACEHOLDER = re.compile(r"\{\{\$[^}]*\}\}")


def _docs(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def per_run_inputs(spec: dict, platform: dict, task_name: str, _seen: frozenset = frozenset()) -> list[str]:
    """What in `task_name`'s KFP cache key can differ between two runs with the same arguments and data."""
    tasks = spec["root"]["dag"]["tasks"]
    task = tasks[task_name]
    problems: list[str] = []
    if not task.get("cachingOptions", {}).get("enableCache"):
        return [f"{task_name}: caching is off"]
    custom_key = task["cachingOptions"].get("cacheKey")
    if custom_key:
        return (
            [f"{task_name}: custom cacheKey {custom_key!r} is per run"]
            if PLACEHOLDER.search(custom_key)
            else []
        )

    def producer_problem(producer: str, what: str) -> list[str]:
        if producer in _seen:
            return []
        upstream = per_run_inputs(spec, platform, producer, _seen | {task_name})
        return (
            [f"{task_name}.{what}: from {producer}, whose key is per run ({'; '.join(upstream)})"]
            if upstream
            else []
        )

    inputs = task.get("inputs", {})
    for name, source in inputs.get("parameters", {}).items():
        if "componentInputParameter" in source:
            continue  # a pipeline argument: the same for the same submission
        if "runtimeValue" in source:
            constant = str(source["runtimeValue"].get("constant", ""))
            if PLACEHOLDER.search(constant):
                problems.append(f"{task_name}.{name}: run-time placeholder {constant!r}")
            continue
        if "taskOutputParameter" in source:
            out = source["taskOutputParameter"]
            key = (out["producerTask"], out["outputParameterKey"])
            if key not in CONTENT_OUTPUTS:
                problems += producer_problem(out["producerTask"], name)
            continue
        problems.append(f"{task_name}.{name}: unrecognised input source {source}")
    for name, source in inputs.get("artifacts", {}).items():
        if "taskOutputArtifact" in source:
            problems += producer_problem(source["taskOutputArtifact"]["producerTask"], name)
        else:
            problems.append(f"{task_name}.{name}: artifact from {source} (its id is per run)")

    component = spec["components"][task["componentRef"]["name"]]
    executor = component["executorLabel"]
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    if PLACEHOLDER.search(container["image"]):
        problems.append(f"{task_name}: image {container['image']!r} is resolved per run")
    for mount in platform.get(executor, {}).get("pvcMount", []):
        name_source = mount.get("pvcNameParameter") or {}
        if "taskOutputParameter" in name_source or PLACEHOLDER.search(str(mount)):
            problems.append(f"{task_name}: PVC name {mount} can differ per run")
    return problems


def test_validate_and_split_are_keyed_on_content_only():
    spec, platform = _docs(COMPILED)
    for step in CONTENT_KEYED_STEPS:
        assert per_run_inputs(spec, platform, step) == [], step
    # ...and the content is in the key: the data set version reaches both.
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["validate-dataset"]["inputs"]["parameters"]["dataset_version"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "extract-frames",
    }
    assert "dataset_version" in tasks["split-dataset"]["inputs"]["parameters"]
    # The steps that must rerun every run are seen as per-run by the same checker.
    assert per_run_inputs(spec, platform, "extract-frames") == ["extract-frames: caching is off"]


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def produce_data(data: Output[Dataset]) -> str:
    return ""


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def consume_artifact(data: Input[Dataset], version: str) -> str:
    return version


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def consume_value(value: str, version: str) -> str:
    return value + version


def _leak_uncached_artifact(version: str):
    extract = produce_data().set_caching_options(False)
    consume_artifact(data=extract.outputs["data"], version=version).set_caching_options(True)


def _leak_run_id(version: str):
    consume_value(value=dsl.PIPELINE_JOB_ID_PLACEHOLDER, version=version).set_caching_options(True)


def _leak_uncached_value(version: str):
    upstream = produce_data().set_caching_options(False)
    consume_value(value=upstream.outputs["Output"], version=version).set_caching_options(True)


def _leak_through_a_cached_step(version: str):
    stamped = consume_value(value=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, version=version).set_caching_options(
        True
    )
    made = produce_data().set_caching_options(True).after(stamped)
    consume_artifact(data=made.outputs["data"], version=stamped.output).set_caching_options(True)


def _clean(version: str):
    made = produce_data().set_caching_options(True)
    consume_artifact(data=made.outputs["data"], version=version).set_caching_options(True)
    consume_value(value="a constant", version=version).set_caching_options(True)


@pytest.mark.parametrize(
    ("body", "step", "expected"),
    [
        (_leak_uncached_artifact, "consume-artifact", "data: from produce-data, whose key is per run"),
        (_leak_run_id, "consume-value", "run-time placeholder '{{$.pipeline_job_uuid}}'"),
        (_leak_uncached_value, "consume-value", "value: from produce-data, whose key is per run"),
        (
            _leak_through_a_cached_step,
            "consume-artifact",
            "version: from consume-value, whose key is per run",
        ),
    ],
)
def test_the_checker_catches_each_way_a_per_run_value_gets_in(tmp_path, body, step, expected):
    spec, platform = _compiled(dsl.pipeline(name="leaky")(body), tmp_path)
    problems = per_run_inputs(spec, platform, step)
    assert any(expected in problem for problem in problems), problems


def test_the_checker_passes_arguments_constants_and_cached_artifacts(tmp_path):
    spec, platform = _compiled(dsl.pipeline(name="clean")(_clean), tmp_path)
    for step in ("produce-data", "consume-artifact", "consume-value"):
        assert per_run_inputs(spec, platform, step) == [], step


def _compiled(pipeline, tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    return _docs(out)
