"""Kubeflow Pipelines components: one step per module, each a thin typed wrapper over `sam2` functions.

Every component runs in the project image (`SAM2_PIPELINE_IMAGE`, default `images.DEFAULT_IMAGE`); large
data moves through S3 (`s3://<data-bucket>/datasets/<name>/<version>/...`,
`s3://<runs-bucket>/<run-id>/...`), and the typed KFP artifacts carry the S3 URIs in their metadata.
"""
