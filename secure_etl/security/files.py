"""The files and directories the platform writes: owner-only whatever the umask, and
secrets refused when someone else could read, replace or redirect them.

Directories are 0700 and files 0600 (the Prometheus textfile is the one file meant for
another reader). A data directory that is looser is repaired (chmod, logged); a secret,
or a directory holding secrets, that another user owns or may write in is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from secure_etl.errors import UserError

SECRET_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_GROUP_OTHER = stat.S_IRWXG | stat.S_IRWXO
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH

log = logging.getLogger(__name__)


class InsecureSecretFile(UserError):
    """A secret, or a directory or lock guarding one, that others could read, replace or
    redirect (their mode, owner, or a symbolic link)."""


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``; existing ones stay."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue  # made at the same moment by another writer: checked by the caller
        os.chmod(directory, mode)  # the umask may have narrowed it


def private_dir(path: Path, holds_keys: bool = False) -> Path:
    """Make ``path`` (and its missing parents) a directory only its owner can use, 0700
    whatever the umask. An existing one that others may use is repaired (chmod 700, with a
    warning in the log); one that ``holds_keys`` is refused (InsecureSecretFile) if
    another user owns it or others may write in it: they could have swapped the keys."""
    path = Path(path)
    _make_dirs(path, PRIVATE_DIR_MODE)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: not a directory; move it away so the platform can create it")
    if holds_keys:
        check_key_dir(path, info)
    if info.st_mode & _GROUP_OTHER:
        mode = stat.S_IMODE(info.st_mode)
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except PermissionError:
            raise UserError(
                f"{path}: mode {mode:04o} lets others in, and {_user(info.st_uid)} owns it, "
                f"so it cannot be changed to 0700: run chmod 700 {path} as its owner"
            ) from None
        log.warning("%s: mode %04o lets others in; changed to 0700", path, mode)
    return path


def check_key_dir(path: Path, info: os.stat_result | None = None) -> None:
    """Refuse a directory of secrets that a user other than us (or root) owns, or that
    group or others may write in (like OpenSSH's check of a key's path)."""
    info = info or Path(path).stat()
    if info.st_uid not in (os.geteuid(), 0):
        raise InsecureSecretFile(
            f"{path}: a directory of keys owned by {_user(info.st_uid)}, not by "
            f"{_user(os.geteuid())} who runs the platform; its keys could be another's"
        )
    if info.st_mode & _GROUP_OTHER_WRITE:
        raise InsecureSecretFile(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others replace the keys in "
            f"this directory; check them, then run: chmod 700 {path}"
        )


def secret_file_problem(path: Path, info: os.stat_result | None = None) -> str | None:
    """Why ``path`` is not a safe secret file, or None: it must be a regular file (not a
    symbolic link), owned by the user running the platform, with no group/other bits."""
    path = Path(path)
    info = info or os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f"{path}: is a symbolic link; a secret must be a regular file (put the file there)"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: not a regular file"
    if info.st_uid != os.geteuid():
        return (
            f"{path}: owned by {_user(info.st_uid)}, not by {_user(os.geteuid())} who runs "
            "the platform; a key another user can replace is refused (replace the file)"
        )
    if info.st_mode & _GROUP_OTHER:
        return (
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read or change it; "
            f"run: chmod 600 {path}"
        )
    return None


def _dir_mode_for(mode: int) -> int:
    # A file meant for other readers gets directories they can pass through.
    return 0o755 if mode & stat.S_IROTH else PRIVATE_DIR_MODE


def write_atomic(path: Path, data: bytes, mode: int = SECRET_MODE) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half;
    owner-only (0600) unless ``mode`` says otherwise, whatever the umask. Missing
    directories are created 0700 (0755 for a file others may read)."""
    _make_dirs(path.parent, _dir_mode_for(mode))
    # Unique per call: threads of one process may write the same file at once.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode & SECRET_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # replaces a symbolic link at ``path``, never its target
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key or other secret, readable by its owner only."""
    write_atomic(path, data, SECRET_MODE)


def read_secret(path: Path) -> bytes:
    """Read a secret file without following a symbolic link, refusing one that is not
    ours, that others can access, or whose directory others could write in."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InsecureSecretFile(secret_file_problem(path)) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        problem = secret_file_problem(path, os.fstat(fd))
        if problem:
            raise InsecureSecretFile(problem)
        check_key_dir(path.parent)
        return handle.read()


@contextmanager
def lock_file(path: Path) -> Iterator[BinaryIO]:
    """Open (creating it 0600) a lock file, refusing a symbolic link at ``path``."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, SECRET_MODE)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InsecureSecretFile(
                f"{path}: the lock is a symbolic link; remove it (the platform makes a new one)"
            ) from None
        raise
    with os.fdopen(fd, "r+b") as handle:
        yield handle


def tighten_open_file(fd: int, path: Path) -> None:
    """Repair an open data file that others may use to 0600 (logged): one created before
    the platform set modes itself, or by hand."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & _GROUP_OTHER:
        os.fchmod(fd, SECRET_MODE)
        log.warning("%s: mode %04o let others use it; repaired to 0600", path, mode)


def owner_only(*paths: Path) -> None:
    """Make existing files 0600 (for files a library creates with the umask's mode)."""
    for path in paths:
        try:
            os.chmod(path, SECRET_MODE)
        except FileNotFoundError:
            continue
