"""The Hugging Face entry points (`build_sam2_hf`, `build_sam2_video_predictor_hf`, `from_pretrained` of
the image predictor, the video predictor and the automatic mask generator) load the official model ids
from a cache laid out as huggingface_hub lays it out, with no network: under HF_HUB_OFFLINE=1 and with the
hub unreachable. When the hub is reachable (here: a local HTTP server answering as the hub's resolve endpoint does), the
checkpoint is downloaded into that cache. A checkpoint that is neither cached nor downloadable, or an
unknown id, is a clear error.

The cache layout is the hub's (huggingface_hub's file_download.py and its cache docs):
`<HF_HUB_CACHE>/models--<org>--<name>/blobs/<sha256>` holds the file, `snapshots/<commit>/<filename>` is a
relative symlink to the blob, and `refs/main` holds the commit hash that `main` resolves to.
Each scenario runs in a subprocess, because huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once,
when it is imported.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from sam2_oracle import own_checkpoint

from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, UnknownModelIdError, build_sam2_hf

MODEL_ID = "facebook/sam2.1-hiera-tiny"
REVISION = "a" * 8 + hashlib.sha1(b"sam2-test").hexdigest()[8:]  # any 40-hex commit id

_SCRIPT = r"""
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2_hf, build_sam2_video_predictor_hf
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

model_id, reference, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
expected = torch.load(reference, weights_only=True)["model"]
out = {}


def same_weights(model):
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


if scenario == "missing":
    try:
        build_sam2_hf(model_id, device="cpu")
        out["error"] = None
    except FileNotFoundError as err:
        out["error"] = str(err)
else:
    out["build_sam2_hf"] = same_weights(build_sam2_hf(model_id, device="cpu"))
    if scenario == "offline":
        video = build_sam2_video_predictor_hf(model_id, device="cpu")
        out["video_hf"] = [type(video).__name__, same_weights(video), video.fill_hole_area]
        video = SAM2VideoPredictor.from_pretrained(model_id, device="cpu")
        out["video_from_pretrained"] = [type(video).__name__, same_weights(video)]
        image = SAM2ImagePredictor.from_pretrained(model_id, device="cpu", mask_threshold=0.5)
        out["image_from_pretrained"] = [same_weights(image.model), image.mask_threshold]
        generator = SAM2AutomaticMaskGenerator.from_pretrained(
            model_id,
            device="cpu",
            hydra_overrides_extra=["++model.image_size=256"],
            points_per_side=2,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
        records = generator.generate(np.full((48, 64, 3), 120, np.uint8))
        model = generator.predictor.model
        out["generator"] = [same_weights(model), model.image_size, len(generator.point_grids[0]), len(records)]
print(json.dumps(out))
"""


def _hub_cache(root: Path, model_id: str, filename: str, checkpoint: Path) -> Path:
    """A cache holding `checkpoint` as `filename` of `model_id`, laid out as huggingface_hub lays it out."""
    repo = root / f"models--{model_id.replace('/', '--')}"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    os.link(checkpoint, repo / "blobs" / digest)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return root


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(scenario: str, env_extra: dict[str, str], reference: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    # Never the real hub: an endpoint on a closed local port stands for "no network" (unless a test
    # gives its own local endpoint).
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "OMP_NUM_THREADS": "1", **env_extra})
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, MODEL_ID, str(reference), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf")
    config, filename = HF_MODEL_ID_TO_FILENAMES[MODEL_ID]
    assert config == "configs/sam2.1/sam2.1_hiera_t.yaml" and filename == "sam2.1_hiera_tiny.pt"
    checkpoint = own_checkpoint(config, root / "tiny.pt")
    return _hub_cache(root / "hub", MODEL_ID, filename, checkpoint), checkpoint


def test_every_entry_point_loads_from_the_cache_offline(cached: tuple[Path, Path]) -> None:
    cache, checkpoint = cached
    out = _run("offline", {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, checkpoint)
    assert out["build_sam2_hf"] is True
    assert out["video_hf"] == ["SAM2VideoPredictor", True, 8]  # the official post-processing applies
    assert out["video_from_pretrained"] == ["SAM2VideoPredictor", True]
    assert out["image_from_pretrained"] == [True, 0.5]  # predictor keyword arguments reach the predictor
    # build_sam2's keyword arguments reach the builder, the others the generator (points_per_side=2).
    assert out["generator"][:3] == [True, 256, 4]
    assert out["generator"][3] >= 1


def test_an_unreachable_hub_falls_back_to_the_cache(cached: tuple[Path, Path]) -> None:
    cache, checkpoint = cached
    assert _run("build only", {"HF_HUB_CACHE": str(cache)}, checkpoint) == {"build_sam2_hf": True}


class _HubResolveHandler(http.server.BaseHTTPRequestHandler):
    """Answers `HEAD|GET /<repo_id>/resolve/<revision>/<filename>` as the hub does for a file it serves
    directly: the commit in X-Repo-Commit, the content hash in ETag, the size in Content-Length (the
    headers huggingface_hub reads in file_download.get_hf_file_metadata, huggingface_hub 2.x), then the
    bytes on GET. Anything else is a 404."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _answer(self, with_body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", REVISION)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - the http.server hook name
        self._answer(with_body=False)

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        self._answer(with_body=True)

    def log_message(self, *args) -> None:
        pass


def test_a_reachable_hub_downloads_into_the_cache(cached: tuple[Path, Path], tmp_path: Path) -> None:
    _, checkpoint = cached
    _HubResolveHandler.files = {f"/{MODEL_ID}/resolve/main/sam2.1_hiera_tiny.pt": checkpoint.read_bytes()}
    _HubResolveHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubResolveHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cache = tmp_path / "fresh"
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        out = _run("build only", {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint}, checkpoint)
    finally:
        server.shutdown()
        server.server_close()
    assert out == {"build_sam2_hf": True}
    assert any(
        r.startswith("GET /facebook/sam2.1-hiera-tiny/resolve/main/") for r in _HubResolveHandler.requests
    )
    repo = cache / "models--facebook--sam2.1-hiera-tiny"
    assert (repo / "refs" / "main").read_text() == REVISION
    assert (repo / "snapshots" / REVISION / "sam2.1_hiera_tiny.pt").read_bytes() == checkpoint.read_bytes()


def test_a_checkpoint_neither_cached_nor_downloadable_is_a_clear_error(tmp_path: Path) -> None:
    reference = tmp_path / "unused.pt"
    torch.save({"model": {}}, reference)
    out = _run("missing", {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}, reference)
    assert out["error"] is not None
    assert "sam2.1_hiera_tiny.pt of facebook/sam2.1-hiera-tiny" in out["error"]
    assert str(tmp_path / "empty") in out["error"] and "HF_HUB_OFFLINE=1" in out["error"]


def test_an_unknown_model_id_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelIdError, match="facebook/sam2.1-hiera-large") as info:
        build_sam2_hf("facebook/sam3-hiera-huge", device="cpu")
    assert isinstance(info.value, KeyError)  # what the official dictionary lookup raises
