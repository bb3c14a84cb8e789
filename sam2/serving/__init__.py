"""Serving a registered SAM 2 version as a KServe endpoint (see docs/serving.md).

`request` parses and checks a tracking request, `video_source` stages the requested page of frames,
`rle` holds the COCO RLE mask format, `tracking` runs the video predictor for one request, and
`kserve_model` is the `kserve.Model` the KServe model server (`python -m sam2.serving`) serves.
"""
