"""The Kubeflow UI shows each run parameter's and each step input's description from the compiled YAML;
they come from the `Args:` of the pipeline function and of each component (kfp's docstring parsing)."""

from pathlib import Path

import pytest
import yaml

COMPILED = Path(__file__).resolve().parents[1] / "pipelines" / "sam2_finetune.yaml"


def _undescribed(definitions: dict | None) -> list[str]:
    names = []
    for kind in ("parameters", "artifacts"):
        for name, spec in ((definitions or {}).get(kind) or {}).items():
            if not str(spec.get("description", "")).strip():
                names.append(name)
    return names


@pytest.fixture(scope="module")
def pipeline_spec() -> dict:
    return next(yaml.safe_load_all(COMPILED.read_text()))


def test_every_pipeline_parameter_has_a_description(pipeline_spec):
    parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    assert len(parameters) > 20  # the run parameters, not an empty section
    assert _undescribed(pipeline_spec["root"]["inputDefinitions"]) == []


def test_every_step_input_has_a_description(pipeline_spec):
    # Components that run a container; the DAG of a ParallelFor only forwards channels the compiler names.
    steps = {name: spec for name, spec in pipeline_spec["components"].items() if "executorLabel" in spec}
    assert len(steps) >= 10
    missing = {name: _undescribed(spec.get("inputDefinitions")) for name, spec in steps.items()}
    assert {name: inputs for name, inputs in missing.items() if inputs} == {}
