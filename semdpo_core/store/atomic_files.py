"""Files written whole or not at all: a temporary beside the target, fsynced, renamed into place,
its directory synced. A temporary is named after its writer (host, pid), so that a later run
removes only the temporaries of writers that are gone (`temporary_is_stale`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
TEMPORARY_OWNER = f"{HOST}-{os.getpid()}"
TEMPORARY_NAME = re.compile(r"\.([A-Za-z0-9_]+)-(\d+)\.[^.]+\.tmp$")
TEMPORARY_MAX_AGE_S = 3600.0  # a temporary this old is stale whoever wrote it (another host, an older name)


def temporary_is_stale(path: Path) -> bool:
    """True for a writer's temporary file that no live writer will rename: its process on this
    host has died, or nothing has touched it for TEMPORARY_MAX_AGE_S."""
    match = TEMPORARY_NAME.search(path.name)
    if match and match.group(1) == HOST:
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's process
        else:
            return False
    try:
        return time.time() - path.stat().st_mtime > TEMPORARY_MAX_AGE_S
    except FileNotFoundError:
        return False


def write_temporary(target: Path, data: bytes) -> Path:
    """`data` in a new file beside `target`, on disk (fsynced) and with the umask's mode, for
    `os.replace` to put in place: the target holds its old bytes or all of the new ones."""
    # the writer's host and pid in the name: a later run removes it only once that writer is gone
    tmp = target.parent / f".{target.name}.{TEMPORARY_OWNER}.{secrets.token_hex(4)}.tmp"
    fd = create_exclusive(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary beside it: a killed writer leaves the old file whole."""
    tmp = write_temporary(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(target.parent)


def sync_directory(folder: Path) -> None:
    """The folder's entries on disk: a rename survives a crash once its directory is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(path: Path, tries: int = 3) -> int:
    """A new file's descriptor (mode 0o666 less the umask, as open() gives), its folders made first;
    made again if another process removed them as empty in between."""
    for attempt in range(tries):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove `folder` and then each parent up to (not including) `root` while it is empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone, or not ours): stop here
            return
        folder = folder.parent
