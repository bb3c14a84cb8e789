"""The served champion: the real KServe ModelServer (kserve 0.18.1, `python -m sam2.serving`) on 127.0.0.1
loading a version from a real MLflow SQLite registry whose model folder and checkpoint live on the test
S3 server, called over HTTP with V1 (`/v1/models/<name>:predict`) and V2 (`/v2/models/<name>/infer`).

The masks must be those of `mlflow.pyfunc` predict and of `python -m sam2.tools.vos_inference` with the
same checkpoint on the same clip; concurrent requests must not mix memory banks; bad requests are 400s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2.eval.masks import read_mask_png, write_palette_png
from sam2.serving import rle
from sam2.utils.network import free_port

MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL = ["++model.image_size=128"]
NAME = "sam2"
REPO = Path(__file__).resolve().parents[1]


def _clip(folder: Path, shift: int, frames: int = 5) -> tuple[Path, np.ndarray]:
    """Two objects (a bright square moving right, a grey bar moving down) on dark ground; the id map of
    frame 0."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(shift)
    for t in range(frames):
        rgb = np.full((64, 80, 3), 30, np.uint8) + rng.integers(0, 8, (64, 80, 3), dtype=np.uint8)
        rgb[20:40, shift + 4 * t : shift + 20 + 4 * t] = 220
        rgb[4 + 3 * t : 12 + 3 * t, 50:76] = (90, 160, 90)
        Image.fromarray(rgb).save(folder / f"{t:05d}.jpg", quality=95)
    ids = np.zeros((64, 80), np.uint8)
    ids[20:40, shift : shift + 20] = 1
    ids[4:12, 50:76] = 2
    return folder, ids


def _register_champion(tracking_uri: str, store, checkpoint_uri: str, run_uri: str, root: Path) -> None:
    """Register the checkpoint as the promote step does: an MLflow run with the data set and val list it
    was scored on, the pyfunc model folder (sam2.promotion.pyfunc_model) in the run's S3 folder, a version
    of `sam2-demo` whose source it is, linked to the run, and the `champion` alias."""
    from mlflow import MlflowClient

    from sam2.promotion.pyfunc_model import save_model_folder

    folder = save_model_folder(root / "mlflow_model", checkpoint_uri, MODEL_CONFIG, SMALL)
    store.upload_folder(folder, f"{run_uri}/mlflow_model")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("sam2-demo", artifact_location=f"{run_uri}/mlflow")
    run = client.create_run(experiment, run_name="run-1")
    bucket = run_uri.split("/")[2]
    client.log_param(run.info.run_id, "dataset_uri", f"s3://{bucket}")
    client.log_param(run.info.run_id, "val_list_uri", f"s3://{bucket}/splits/val.txt")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("sam2-demo")
    version = client.create_model_version(
        "sam2-demo", source=f"{run_uri}/mlflow_model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("sam2-demo", "champion", version.version)


@pytest.fixture(scope="module")
def registry(s3_server, tmp_path_factory) -> Iterator[dict]:
    """A champion registered as the promote step registers it, in a SQLite registry, its checkpoint (tiny
    model, seeded random weights) and two clips on S3; the environment that reaches them."""
    import torch
    from s3_server import store_for

    from sam2.build_sam import build_sam2

    root = tmp_path_factory.mktemp("serving")
    store = store_for(s3_server)
    bucket = "serving-test"
    store.ensure_bucket(bucket)
    torch.manual_seed(0)
    model = build_sam2(MODEL_CONFIG, None, device="cpu", hydra_overrides_extra=SMALL)
    # Random weights score every object absent after the prompted frame (empty masks everywhere, which
    # would make the comparisons below vacuous); a raised object-score bias keeps both objects present,
    # so their masks overlap and the per-pixel winner decides, as in a trained model's crossings.
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    checkpoint = root / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    run_uri = f"s3://{bucket}/run-1"
    store.upload_file(checkpoint, f"{run_uri}/checkpoints/checkpoint.pt")
    clips = {}
    for video, shift in (("cat", 8), ("dog", 30)):
        folder, ids = _clip(root / "JPEGImages" / video, shift)
        write_palette_png(root / "Annotations" / video / "00000.png", ids)
        for frame in sorted(folder.iterdir()):
            store.upload_file(frame, f"s3://{bucket}/JPEGImages/{video}/{frame.name}")
        store.upload_file(
            root / "Annotations" / video / "00000.png", f"s3://{bucket}/Annotations/{video}/00000.png"
        )
        clips[video] = {"frames": folder, "ids": ids, "uri": f"s3://{bucket}/JPEGImages/{video}"}
    store.write_bytes(f"s3://{bucket}/splits/val.txt", b"dog\ncat\n")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**s3_server.env(), "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        _register_champion(tracking_uri, store, f"{run_uri}/checkpoints/checkpoint.pt", run_uri, root)
        yield {
            "tracking_uri": tracking_uri,
            "env": env,
            "clips": clips,
            "root": root,
            "checkpoint": checkpoint,
            "bucket": bucket,
            "store": store,
        }


@contextlib.contextmanager
def _running_server(args: list[str], port: int, registry: dict, log_path: Path) -> Iterator[str]:
    """A model server process (`python <args>`) against the test registry; yields its URL once the model
    is ready, stops it after."""
    env = {
        **os.environ,
        **registry["env"],
        "MLFLOW_TRACKING_URI": registry["tracking_uri"],
        "OMP_NUM_THREADS": "1",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"model server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models/{NAME}", timeout=2) as response:
                    if json.load(response).get("ready"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"model server not ready in 240 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(registry) -> Iterator[str]:
    """`python -m sam2.serving` (KServe's ModelServer) for models:/sam2-demo@champion; yields its URL."""
    port = free_port()
    args = [
        "-m",
        "sam2.serving",
        "--model_uri=models:/sam2-demo@champion",
        f"--model_name={NAME}",
        f"--http_port={port}",
        "--enable_grpc=false",
        "--max_concurrent=2",
        "--max_frames=50",
    ]
    with _running_server(args, port, registry, registry["root"] / "server.log") as url:
        yield url


def _vos_inference(registry: dict, out: Path) -> Path:
    """`python -m sam2.tools.vos_inference` with the registered checkpoint over both clips; returns `out`."""
    root = registry["root"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sam2.tools.vos_inference",
            f"--sam2_cfg={MODEL_CONFIG}",
            f"--sam2_checkpoint={registry['checkpoint']}",
            f"--base_video_dir={root / 'JPEGImages'}",
            f"--input_mask_dir={root / 'Annotations'}",
            f"--output_mask_dir={out}",
            "--device=cpu",
            "--hydra_overrides",
            *SMALL,
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
    )
    return out


def _post(url: str, body: object, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _mask_prompts(ids: np.ndarray) -> list[dict]:
    return [{"id": int(i), "mask": rle.encode(ids == i)} for i in np.unique(ids) if i]


def _predict(server: str, request: dict) -> dict:
    status, body = _post(f"{server}/v1/models/{NAME}:predict", {"instances": [request]})
    assert status == 200, body
    return body["predictions"][0]


def _id_maps(result: dict) -> np.ndarray:
    """The per-frame id maps of a result (objects are exclusive, so the order of painting is moot)."""
    maps = np.zeros((result["num_frames"], result["height"], result["width"]), np.uint8)
    for i, frame in enumerate(result["frames"]):
        for obj in frame["objects"]:
            mask = rle.decode(obj["mask"])
            assert not (maps[i] & mask).any(), "objects overlap in a returned frame"
            maps[i][mask] = obj["id"]
    return maps


def test_v1_masks_equal_pyfunc_and_vos_inference(server, registry, tmp_path):
    import mlflow.pyfunc

    clip = registry["clips"]["cat"]
    result = _predict(server, {"video": clip["uri"], "objects": _mask_prompts(clip["ids"])})
    assert result["object_ids"] == [1, 2] and result["num_frames"] == 5 and result["total_frames"] == 5
    assert result["next_start_frame"] is None and (result["height"], result["width"]) == (64, 80)
    served = _id_maps(result)
    for obj in (1, 2):  # the prompted frame keeps its masks (up to the model's resampling at the edges)
        both, either = (
            ((served[0] == obj) & (clip["ids"] == obj)).sum(),
            ((served[0] == obj) | (clip["ids"] == obj)).sum(),
        )
        assert both / either > 0.9
    scores = [o["score"] for f in result["frames"] for o in f["objects"]]
    assert len(scores) == 10 and all(0.0 <= s <= 1.0 for s in scores)

    # mlflow.pyfunc on the same registered version, in this process
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registry["tracking_uri"])
        model = mlflow.pyfunc.load_model("models:/sam2-demo@champion")
        by_pyfunc = model.predict({"video": str(clip["frames"]), "mask": clip["ids"]})
    assert by_pyfunc["object_ids"] == [1, 2]
    np.testing.assert_array_equal(served, by_pyfunc["masks"])

    # the upstream-compatible command line with the same checkpoint
    out = _vos_inference(registry, tmp_path / "vos")
    for t in range(5):
        np.testing.assert_array_equal(served[t], read_mask_png(out / "cat" / f"{t:05d}.png"))
    for t in range(1, 5):  # not vacuous: both objects hold pixels on every tracked frame
        assert (served[t] == 1).sum() > 100 and (served[t] == 2).sum() > 100, t


def test_v2_uploaded_frames_and_box_prompts(server, registry):
    clip = registry["clips"]["cat"]
    frames = [base64.b64encode(p.read_bytes()).decode() for p in sorted(clip["frames"].iterdir())]
    request = {"video": {"frames": frames}, "objects": _mask_prompts(clip["ids"])}
    body = {"inputs": [{"name": "request", "shape": [1], "datatype": "BYTES", "data": [json.dumps(request)]}]}
    status, answer = _post(f"{server}/v2/models/{NAME}/infer", body)
    assert status == 200, answer
    (output,) = answer["outputs"]
    assert output["name"] == "result" and output["datatype"] == "BYTES"
    by_upload = json.loads(output["data"][0])
    by_s3 = _predict(server, {"video": clip["uri"], "objects": _mask_prompts(clip["ids"])})
    assert by_upload["frames"] == by_s3["frames"]

    boxed = _predict(
        server,
        {
            "video": clip["uri"],
            "objects": [{"id": 7, "box": [8, 20, 28, 40]}, {"id": 9, "points": [[60, 8]], "labels": [1]}],
            "return_object_ids": [9],
        },
    )
    assert boxed["object_ids"] == [9]
    assert all([o["id"] for o in f["objects"]] == [9] for f in boxed["frames"])


def test_pages_continue_the_full_run(server, registry):
    clip = registry["clips"]["dog"]
    prompts = _mask_prompts(clip["ids"])
    full = _predict(server, {"video": clip["uri"], "objects": prompts})
    first = _predict(server, {"video": clip["uri"], "objects": prompts, "max_frames": 3})
    assert first["num_frames"] == 3 and first["next_start_frame"] == 2 and first["total_frames"] == 5
    # Tracking is causal: a page's frames are the full run's frames.
    assert first["frames"] == full["frames"][:3]
    last = first["frames"][-1]
    second = _predict(
        server,
        {
            "video": clip["uri"],
            "start_frame": first["next_start_frame"],
            "objects": [{"id": o["id"], "mask": o["mask"]} for o in last["objects"]],
        },
    )
    assert [f["frame"] for f in second["frames"]] == [2, 3, 4] and second["next_start_frame"] is None
    assert second["object_ids"] == [1, 2] and second["total_frames"] == 5


def test_concurrent_requests_do_not_mix_memory_banks(server, registry):
    requests = {
        video: {"video": clip["uri"], "objects": _mask_prompts(clip["ids"])}
        for video, clip in registry["clips"].items()
    }
    alone = {video: _predict(server, request) for video, request in requests.items()}
    together: dict[str, dict] = {}
    barrier = threading.Barrier(len(requests))

    def call(video: str) -> None:
        barrier.wait()
        together[video] = _predict(server, requests[video])

    threads = [threading.Thread(target=call, args=(video,)) for video in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert set(together) == set(requests)
    for video in requests:
        assert together[video]["frames"] == alone[video]["frames"], video
    assert alone["cat"]["frames"] != alone["dog"]["frames"]


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"video": "s3://serving-test/JPEGImages/cat", "objects": []}, "no prompt"),
        ({"video": "s3://serving-test/JPEGImages/cat", "objects": [{"id": 1}]}, "no prompt for object 1"),
        (
            {"video": "s3://serving-test/JPEGImages/nope", "objects": [{"id": 1, "box": [1, 1, 9, 9]}]},
            "unreadable video",
        ),
        (
            {"video": "http://127.0.0.1:9/x.mp4", "objects": [{"id": 1, "box": [1, 1, 9, 9]}]},
            "unreadable video",
        ),
        (
            {"video": {"frames": ["bm90IGEganBlZw=="]}, "objects": [{"id": 1, "box": [1, 1, 9, 9]}]},
            "not a JPEG",
        ),
        (
            {
                "video": "s3://serving-test/JPEGImages/cat",
                "objects": [{"id": 1, "box": [1, 1, 9, 9]}],
                "return_object_ids": [1, 4],
            },
            "unknown object id(s) [4]",
        ),
        (
            {
                "video": "s3://serving-test/JPEGImages/cat",
                "objects": [{"id": 1, "mask": {"size": [8, 8], "counts": "0"}}],
            },
            "mask size 8x8 differs",
        ),
        ({"video": "/etc/passwd", "objects": [{"id": 1, "box": [1, 1, 9, 9]}]}, "local paths are not served"),
        (
            {
                "video": "s3://serving-test/JPEGImages/cat",
                "objects": [{"id": 1, "box": [1, 1, 9, 9]}],
                "start_frame": 9,
            },
            "past the end",
        ),
    ],
)
def test_bad_requests_are_400_with_a_message(server, request_body, message):
    status, body = _post(f"{server}/v1/models/{NAME}:predict", {"instances": [request_body]})
    assert status == 400, body
    assert message in body["error"] and "Traceback" not in body["error"]


def test_malformed_bodies_are_400(server):
    status, body = _post(f"{server}/v1/models/{NAME}:predict", None, raw=b"{not json")
    assert status == 400 and "Traceback" not in json.dumps(body)
    status, body = _post(f"{server}/v1/models/{NAME}:predict", {"instances": []})
    assert status == 400 and "empty" in body["error"]
    bad_v2 = {"inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": ["{}"]}]}
    status, body = _post(f"{server}/v2/models/{NAME}/infer", bad_v2)
    assert status == 400 and "'request'" in body["error"]


def test_make_serve_answers_a_val_video_of_the_local_champion(registry, tmp_path):
    """What `make serve` runs (pipelines.serve_local): the champion of the local registry, served, answers
    the example request it writes for the first val video with vos_inference's masks."""
    port = free_port()
    args = ["-m", "pipelines.serve_local", "--dataset=demo", f"--http_port={port}", f"--local_dir={tmp_path}"]
    with _running_server(args, port, registry, tmp_path / "serve.log") as url:
        body = json.loads((tmp_path / "serve-request.json").read_text())
        (request,) = body["instances"]
        assert request["video"] == registry["clips"]["dog"]["uri"], "the first video of the val list"
        status, answer = _post(f"{url}/v1/models/{NAME}:predict", body)
    assert status == 200, answer
    served = _id_maps(answer["predictions"][0])
    out = _vos_inference(registry, tmp_path / "vos")
    for t in range(5):
        np.testing.assert_array_equal(served[t], read_mask_png(out / "dog" / f"{t:05d}.png"))
