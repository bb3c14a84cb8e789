"""Loading a registered version whose folder is in object storage: without MLFLOW_S3_ENDPOINT_URL one line
names it (MLflow's boto3 would ask AWS for the bucket and end in a botocore traceback); with only this
package's S3_ENDPOINT_URL set, the endpoint is taken from it and the load works against the real server."""

from __future__ import annotations

import os

import mlflow.pyfunc
import pytest
from mlflow import MlflowClient

from sam2.promotion.loading import load_registered_model


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def registered(tmp_path, s3_store, s3_bucket, monkeypatch) -> str:
    folder = tmp_path / "model"
    mlflow.pyfunc.save_model(str(folder), python_model=_Echo())
    source = f"s3://{s3_bucket}/mlflow/echo"
    s3_store.upload_folder(folder, source)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # reverted after the test, unlike mlflow.set_*_uri
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    client = MlflowClient(uri, uri)
    client.create_registered_model("sam2-echo")
    version = client.create_model_version("sam2-echo", source)
    client.set_registered_model_alias("sam2-echo", "champion", version.version)
    return "models:/sam2-echo@champion"


def test_without_an_endpoint_one_line_names_mlflow_s3_endpoint_url(
    registered, s3_bucket, monkeypatch
) -> None:
    for name in ("MLFLOW_S3_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError) as info:
        load_registered_model(registered)
    message = str(info.value)
    assert "MLFLOW_S3_ENDPOINT_URL" in message and f"s3://{s3_bucket}/mlflow/echo" in message
    assert "\n" not in message


def test_the_endpoint_comes_from_s3_endpoint_url(registered, s3_env, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_env["S3_ENDPOINT_URL"])
    model = load_registered_model(registered)
    assert list(model.predict([1, 2])) == [1, 2]
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == s3_env["S3_ENDPOINT_URL"]
