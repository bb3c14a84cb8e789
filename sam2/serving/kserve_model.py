"""The `kserve.Model` that serves a registered SAM 2 version: semi-supervised video tracking over HTTP.

It loads `models:/sam2-<data set>@champion` (or `/<version>`) with `mlflow.pyfunc.load_model`, the same
loading code every registry user has, and uses the wrapped video predictor. A request (see
sam2.serving.request) comes as a V1 `{"instances": [request, ...]}` to `/v1/models/<name>:predict`, or as
V2 to `/v2/models/<name>/infer` with one BYTES input `request` holding the request's JSON (the answer is a
BYTES output `result` with the JSON result).

Concurrency: the KServe server runs `predict` on its event loop; tracking runs in a worker thread so the
server keeps answering health checks, and a semaphore lets at most `max_concurrent` requests track at
once (1 by default: a GPU holds one video's features and memory at a time). Each request has its own
inference state and staging folder, so requests never share a memory bank.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from sam2.serving.request import RequestError, TrackRequest, parse_request
from sam2.serving.tracking import TrackResult, track_page
from sam2.serving.video_source import stage_page

logger = logging.getLogger(__name__)

V2_INPUT = "request"
V2_OUTPUT = "result"


def load_registered_predictor(model_uri: str) -> Any:
    """The video predictor of a registered version (`models:/<name>@<alias>` or `models:/<name>/<version>`)
    as `mlflow.pyfunc.load_model` builds it (on the GPU when there is one, else the CPU)."""
    from sam2.promotion.loading import load_registered_model  # MLFLOW_S3_ENDPOINT_URL checked first

    return load_registered_model(model_uri).unwrap_python_model().predictor


class SAM2VideoTracker(kserve.Model):
    """Tracks prompted objects through a video page per request (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model_uri: str,
        max_concurrent: int = 1,
        max_frames: int = 300,
        max_download_bytes: int = 2 << 30,
        work_dir: str | None = None,
    ) -> None:
        super().__init__(name)
        if max_concurrent < 1 or max_frames < 1:
            raise ValueError(
                f"max_concurrent and max_frames must be >= 1, got {max_concurrent}, {max_frames}"
            )
        self.model_uri = model_uri
        self.max_frames = max_frames
        self.max_download_bytes = max_download_bytes
        self.work_dir = work_dir
        self.predictor: Any = None
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def load(self) -> bool:
        self.predictor = load_registered_predictor(self.model_uri)
        logger.info("serving %s as model %r on %s", self.model_uri, self.name, self.predictor.device)
        self.ready = True
        return self.ready

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            request = self._parse(_v2_body(payload))
            result = await asyncio.to_thread(self.track, request)
            text = json.dumps(result.to_json())
            output = InferOutput(name=V2_OUTPUT, shape=[1], datatype="BYTES", data=[text])
            return InferResponse(
                model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4())
            )
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('a V1 request is {"instances": [<tracking request>, ...]}')
        if not payload["instances"]:
            raise InvalidInput("'instances' is empty: send at least one tracking request")
        requests = [self._parse(body) for body in payload["instances"]]
        results = [await asyncio.to_thread(self.track, r) for r in requests]
        return {"predictions": [r.to_json() for r in results]}

    def track(self, request: TrackRequest) -> TrackResult:
        """Stage the request's page and track it, holding one of the `max_concurrent` slots.

        Raises kserve's InvalidInput (HTTP 400) for a request that cannot be served.
        """
        max_frames = min(request.max_frames or self.max_frames, self.max_frames)
        with self._slots, tempfile.TemporaryDirectory(prefix="sam2-serve-", dir=self.work_dir) as tmp:
            try:
                page = stage_page(
                    request.video,
                    request.start_frame,
                    max_frames,
                    Path(tmp) / "frames",
                    self.max_download_bytes,
                )
                result = track_page(self.predictor, page, request)
            except RequestError as exc:
                raise InvalidInput(str(exc)) from None
        logger.info(
            "tracked %d object(s) on frames %d-%d in %.2f s",
            len(result.object_ids),
            result.start_frame,
            result.start_frame + len(result.frames) - 1,
            result.seconds,
        )
        return result

    @staticmethod
    def _parse(body: Any) -> TrackRequest:
        try:
            return parse_request(body)
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None


def _v2_body(request: InferRequest) -> Any:
    """The tracking request inside a V2 request: the JSON text of its BYTES input `request`."""
    found = [i for i in request.inputs if i.name == V2_INPUT]
    if len(found) != 1 or found[0].datatype != "BYTES":
        names = [i.name for i in request.inputs]
        raise InvalidInput(
            f"a V2 request has one BYTES input named {V2_INPUT!r} (the request JSON), got {names}"
        )
    data = found[0].data
    while isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]
    if not isinstance(data, list) or len(data) != 1:
        raise InvalidInput(f"input {V2_INPUT!r} holds one JSON string (shape [1])")
    text = data[0].decode("utf-8") if isinstance(data[0], bytes) else data[0]
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {V2_INPUT!r} is not JSON: {exc}") from None
