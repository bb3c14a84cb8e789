"""Data preparation: frame extraction, manifest, validation, splitting and the demo data set.

The layout every step produces and reads (DAVIS/MOSE style, as the upstream SAM 2 training code expects)::

    <root>/JPEGImages/<video>/00000.jpg ...
    <root>/Annotations/<video>/00000.png ...   palette PNG, pixel value = object id (0 = background)
    <root>/Annotations/<video>_manual.json     SA-V videos: the masklet JSON instead of PNGs
    <root>/manifest.json                        per video: frames, size, object ids, checksums; its hash
                                                is the data set version
"""
