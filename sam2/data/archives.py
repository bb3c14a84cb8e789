"""Safe unpacking of ``.tar``, ``.tar.gz``/``.tgz`` and ``.zip`` data set archives.

Every member is checked before anything is written: a member whose path is absolute or climbs out of
the target (``../``), and any link, device or FIFO, is rejected with its name. Unpacking goes to a
temporary folder renamed into place at the end, so a failure leaves nothing half-unpacked.
"""

from __future__ import annotations

import logging
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from sam2.data.layout import DataPrepError

logger = logging.getLogger(__name__)


def _check_member_path(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataPrepError(
            f"{archive}: member {name!r} has an absolute path; refusing to unpack the archive"
        )
    if ".." in path.parts:
        raise DataPrepError(
            f"{archive}: member {name!r} climbs out of the target folder (..); refusing to unpack"
        )


def _check_tar(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        _check_member_path(archive, member.name)
        if member.issym() or member.islnk():
            raise DataPrepError(
                f"{archive}: member {member.name!r} is a link (to {member.linkname!r}); links are not "
                "allowed in data set archives, store the file itself"
            )
        if not (member.isfile() or member.isdir()):
            raise DataPrepError(f"{archive}: member {member.name!r} is not a regular file or folder")
    return members


def _check_zip(archive: Path, handle: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = handle.infolist()
    for member in members:
        _check_member_path(archive, member.filename)
        unix_mode = member.external_attr >> 16
        if unix_mode and stat.S_ISLNK(unix_mode):
            raise DataPrepError(
                f"{archive}: member {member.filename!r} is a symbolic link; links are not allowed in data "
                "set archives, store the file itself"
            )
    return members


def unpack_archive(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into the new folder ``target`` (reused when a previous call finished it).

    Raises:
        DataPrepError: unreadable archive, or a member that is unsafe (named in the message).
    """
    if target.is_dir():
        logger.info("%s already unpacked at %s", archive, target)
        return target
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            try:
                with zipfile.ZipFile(archive) as handle:
                    members = _check_zip(archive, handle)
                    for member in members:
                        handle.extract(member, partial)
            except zipfile.BadZipFile as err:
                raise DataPrepError(f"{archive}: not a readable zip archive ({err})") from None
        else:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    members = _check_tar(archive, tar)
                    for member in members:
                        tar.extract(member, partial, set_attrs=False, filter="data")
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DataPrepError(f"{archive}: not a readable tar archive ({err})") from None
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("unpacked %s (%d members) to %s", archive, len(members), target)
    return target
