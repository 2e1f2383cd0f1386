"""Opening the agent's log files safely, wherever the log directory is.

The default log directory is the system temp directory, which every local user can write
to. An agent running as root that opened ``/tmp/coder-startup-script.log`` by name would
follow a symbolic link another user planted there and truncate (and chmod) whatever it
points at. So every log file is opened here: never through a symbolic link
(``O_NOFOLLOW``), never inherited by children (``O_CLOEXEC``), and used only if it is a
regular file with one link, owned by the agent's user. Truncation and the 0600 mode are
applied to the opened descriptor, after those checks. A directory the agent creates for
its logs is 0700 whatever the umask.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from agent.sdk.errors import WsagentError

LOG_FILE_MODE: Final = 0o600
LOG_DIR_MODE: Final = 0o700


class LogFileError(WsagentError, OSError):
    """A log file exists but is not one the agent may write (a link, someone else's)."""


def make_log_dir(path: Path) -> None:
    """Create ``path`` and its missing parents 0700; directories that exist are left as
    they are (the system temp directory is a shared, sticky one on purpose)."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, LOG_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to change
        # mkdir's mode is masked by the umask (a umask of 0700 would leave 0000).
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, LOG_DIR_MODE)
        finally:
            os.close(fd)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))


def open_log_file(path: Path, *, truncate: bool = False) -> int:
    """Open (creating 0600) the log file at ``path`` for writing and return the descriptor.

    Appends unless ``truncate``. Raises :class:`LogFileError` for a symbolic link, a
    non-regular file, a file with other hard links, or one owned by another user; the file
    is not modified then.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if not truncate:
        flags |= os.O_APPEND
    try:
        # O_NONBLOCK: a FIFO planted under the log's name must not hang the open.
        fd = os.open(path, flags, LOG_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogFileError(f"refusing log file {path}: it is a symbolic link") from None
        if exc.errno == errno.ENXIO:
            raise LogFileError(f"refusing log file {path}: it is a FIFO") from None
        raise
    try:
        _check(fd, path)
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
        os.fchmod(fd, LOG_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LogFileError(f"refusing log file {path}: not a regular file")
    if info.st_uid != os.geteuid():
        raise LogFileError(
            f"refusing log file {path}: owned by uid {info.st_uid}, not by the agent's"
            f" user (uid {os.geteuid()})",
        )
    if info.st_nlink != 1:
        # A hard link to another file of the same user (root's /etc/shadow, say).
        raise LogFileError(f"refusing log file {path}: it has {info.st_nlink} hard links")
