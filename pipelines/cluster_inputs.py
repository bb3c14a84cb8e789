"""Put a local data set source (a MOSE_ROOT folder or archive) in the data bucket before a cluster run.

A pod cannot read a path on the submitting machine, so `pipelines.run` uploads it first to
`s3://<data_bucket>/sources/<dataset>/<content hash>/` (a folder as a published folder with its marker,
an archive as one object under that prefix) and passes that URI as `source_uri`. The prefix is named by a
hash of the content, so the same data is found and not sent again, changed data never mixes with an older
upload, and an interrupted upload resumes where it stopped (files already stored with the same checksum
are skipped by :meth:`sam2.storage.ObjectStore.upload_folder`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sam2.storage import ObjectStore
from sam2.utils.file_hashing import sha256_of_file

logger = logging.getLogger(__name__)

SOURCES_PREFIX = "sources"


@dataclass(frozen=True)
class StagedSource:
    """Where the source now is; `uploaded` False means the same content was there already."""

    uri: str
    digest: str
    uploaded: bool
    num_files: int
    num_bytes: int
    files_sent: int = 0
    files_already_there: int = 0


def is_local_source(source: str) -> bool:
    """True for a path on this machine (what a pod cannot read); False for `s3://` and `demo:`."""
    return not (source.startswith("s3://") or source.strip() == "demo:")


def _files(root: Path) -> list[tuple[str, Path]]:
    """(posix relative path, path) of the regular files under `root`, sorted: what upload_folder sends."""
    return sorted(
        (p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    )


def source_digest(path: Path) -> tuple[str, int, int]:
    """(SHA-256 of the content, number of files, bytes) of a folder (paths, sizes and file hashes) or a file.

    Shows a progress bar on a terminal: hashing a MOSE-sized folder reads every byte once.
    """
    files = _files(path) if path.is_dir() else [(path.name, path)]
    sizes = [p.stat().st_size for _, p in files]
    total = hashlib.sha256()
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=f"hashing {path.name}", disable=None) as bar:
        if path.is_file():
            digest = sha256_of_file(path, bar.update)
            return digest, 1, sizes[0]
        for (rel, file), size in zip(files, sizes, strict=True):
            total.update(f"{rel}\t{size}\t{sha256_of_file(file, bar.update)}\n".encode())
    return total.hexdigest(), len(files), sum(sizes)


def stage_source(
    source: str | Path, data_bucket: str, dataset: str, store: ObjectStore | None = None
) -> StagedSource:
    """Upload the local folder or archive `source` to the data bucket unless its content is there already.

    Raises:
        FileNotFoundError: `source` does not exist.
        sam2.storage.StorageError: the object store refused or could not be reached (its message says why).
    """
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    digest, num_files, num_bytes = source_digest(path)
    base = f"s3://{data_bucket}/{SOURCES_PREFIX}/{dataset}/{digest[:16]}"
    store = store or ObjectStore()
    if path.is_dir():
        if store.is_published(base):
            logger.info("%s holds this content already (%d files): not uploading %s", base, num_files, path)
            return StagedSource(base, digest, False, num_files, num_bytes)
        logger.info("uploading %s (%d files, %.1f GB) to %s", path, num_files, num_bytes / 1e9, base)
        result = store.upload_folder(path, base)
        return StagedSource(base, digest, True, num_files, num_bytes, result.transferred, result.skipped)
    uri = f"{base}/{path.name}"
    if store.exists(uri):  # an object appears only once its upload completed, under its content's hash
        logger.info("%s is there already: not uploading %s", uri, path)
        return StagedSource(uri, digest, False, 1, num_bytes)
    logger.info("uploading %s (%.1f GB) to %s", path, num_bytes / 1e9, uri)
    store.upload_file(path, uri)
    return StagedSource(uri, digest, True, 1, num_bytes, 1, 0)
