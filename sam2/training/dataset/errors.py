"""Errors raised by the training data pipeline.

`DatasetError` means the data or the configuration is wrong and retrying cannot help: it always reaches
the user, naming the video/file at fault and what to do. `SamplingError` means one video offered no usable
clip this time; a training data set may draw another video instead.
"""


class DatasetError(ValueError):
    """Bad data or a data setting that does not fit it (short clip, non-.jpg frames, missing mask...)."""


class SamplingError(RuntimeError):
    """No usable clip could be drawn from one video (e.g. no object visible in any sampled first frame)."""
