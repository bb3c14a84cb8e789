"""The outcome of validating a data set (videos or COCO images): what is good, what is bad and why.

Its own module so that each format's checker (``sam2.data.validation`` for videos, ``sam2.data.coco`` for
images) builds the same report without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ValidationReport:
    """Outcome of :func:`sam2.data.validation.validate_dataset`: problems (make a video bad) and
    warnings, per video (per image file name for a COCO data set)."""

    root: str
    num_frames: int
    good: list[str] = field(default_factory=list)
    bad: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "num_frames": self.num_frames,
            "num_videos": len(self.good) + len(self.bad),
            "num_good": len(self.good),
            "num_bad": len(self.bad),
            "good": self.good,
            "bad": self.bad,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        lines = [
            f"validated {len(self.good) + len(self.bad)} videos in {self.root} (num_frames={self.num_frames}): "
            f"{len(self.good)} good, {len(self.bad)} bad"
        ]
        for video, problems in sorted(self.bad.items()):
            lines += [f"  BAD  {video}: {p}" for p in problems]
        for video, notes in sorted(self.warnings.items()):
            lines += [f"  warn {video}: {n}" for n in notes]
        return "\n".join(lines)
