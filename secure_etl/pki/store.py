"""The certificate store: versioned directories and a ``current`` link swapped atomically.

Layout, per certificate::

    <root>/<name>/versions/<version>/{cert,chain,fullchain,privkey}.pem
    <root>/<name>/current -> versions/<version>
    <root>/<name>/.lock

Services read ``<root>/<name>/current/fullchain.pem`` and ``privkey.pem``: the link is
replaced with one ``rename``, so a reader sees the old version or the new one, never a mix.
A version directory is complete before it is renamed into place, so nothing half-written
ever becomes current. Directories are 0700 and files 0600; a ``<root>/<name>`` or a
``.lock`` that is a symbolic link, or a directory another user owns, is refused.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from secure_etl.pki.issuer import IssuedCertificate
from secure_etl.security.files import (
    SECRET_MODE,
    InsecureSecretFile,
    check_key_dir,
    lock_file,
    private_dir,
    read_secret,
    secret_file_problem,
)

# A version's id: the UTC time it was installed.
VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"


def version_time(version: str | None) -> dt.datetime | None:
    """When a version was installed (its id is that UTC time), or None for no version."""
    try:
        return dt.datetime.strptime(version or "", VERSION_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


# The check that the current private key is safe on disk (see private_key_problem).
PRIVATE_KEY_CHECK = "private_key_protected"


class StoreLocked(Exception):
    """Another process holds the certificate's lock for longer than we wait."""


@dataclass(frozen=True)
class CertificatePaths:
    directory: Path

    @property
    def current(self) -> Path:
        return self.directory / "current"

    @property
    def cert(self) -> Path:
        return self.current / "cert.pem"

    @property
    def chain(self) -> Path:
        return self.current / "chain.pem"

    @property
    def fullchain(self) -> Path:
        return self.current / "fullchain.pem"

    @property
    def privkey(self) -> Path:
        return self.current / "privkey.pem"


class CertificateStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def paths(self, name: str) -> CertificatePaths:
        return CertificatePaths(self.root / name)

    def current_version(self, name: str) -> str | None:
        link = self.paths(name).current
        try:
            return os.readlink(link).rsplit("/", 1)[-1]
        except FileNotFoundError:
            return None

    def installed_at(self, name: str) -> dt.datetime | None:
        """When the current version was installed (its id is that UTC time), or None."""
        return version_time(self.current_version(name))

    def has_current(self, name: str) -> bool:
        return self.paths(name).fullchain.is_file()

    def current_fullchain(self, name: str) -> bytes | None:
        """The current version's fullchain.pem, or None."""
        try:
            return self.paths(name).fullchain.read_bytes()
        except FileNotFoundError:
            return None

    def current_key(self, name: str) -> bytes | None:
        """The current private key (PEM), or None; a key file others could read or
        replace is refused (InsecureSecretFile)."""
        if not self.has_current(name):
            return None
        return read_secret(self.paths(name).privkey)

    @contextmanager
    def materialised(self, name: str) -> Iterator[CertificatePaths]:
        """The current version's files: here, the store's own (0600, through ``current``)."""
        yield self.paths(name)

    def versions(self, name: str) -> list[str]:
        """Installed versions, oldest first."""
        directory = self.root / name / "versions"
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))

    def certificate_dir(self, name: str) -> Path:
        """``<root>/<name>``, created 0700; refused if it is a symbolic link (it could
        lead the keys elsewhere) or not ours."""
        private_dir(self.root)
        directory = self.root / name
        if directory.is_symlink():
            raise InsecureSecretFile(_linked_dir(directory))
        return private_dir(directory, holds_keys=True)

    def private_key_problem(self, name: str) -> str | None:
        """Why another user could read or replace the current private key (a symbolic
        link, not ours, group/other bits, a directory others may write in), or None."""
        directory = self.root / name
        if directory.is_symlink():
            return _linked_dir(directory)
        key = self.paths(name).privkey
        try:
            check_key_dir(key.parent)
            return secret_file_problem(key)
        except InsecureSecretFile as err:
            return str(err)
        except FileNotFoundError:
            return f"{key}: missing"

    @contextmanager
    def lock(self, name: str, timeout_s: float = 300.0) -> Iterator[None]:
        """Hold the certificate's exclusive lock so two renewals cannot interleave."""
        directory = self.certificate_dir(name)
        deadline = time.monotonic() + timeout_s
        with lock_file(directory / ".lock") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise StoreLocked(
                            f"certificate {name!r} is locked by another renewal "
                            f"(waited {timeout_s:.0f} s on {directory / '.lock'})"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def install(self, name: str, issued: IssuedCertificate, keep: int = 5) -> str:
        """Write a new version, make it current, prune to ``keep`` versions; returns its id.

        Call with ``lock(name)`` held.
        """
        # lock(name) made and checked <root>/<name>.
        versions = private_dir(self.root / name / "versions", holds_keys=True)
        version = dt.datetime.now(dt.UTC).strftime(VERSION_FORMAT)
        staging = versions / f".staging-{version}"
        staging.mkdir(mode=0o700)
        try:
            # The staging directory is new and ours, and becomes a version with one
            # rename: its files need no atomic replacement of their own, only to be
            # durable before that rename.
            _write_new(staging / "cert.pem", issued.cert_pem)
            _write_new(staging / "chain.pem", issued.chain_pem)
            _write_new(staging / "fullchain.pem", issued.fullchain_pem)
            _write_new(staging / "privkey.pem", issued.key_pem)
            _sync_dir(staging)  # the files' names, before the rename publishes them
            os.rename(staging, versions / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # The version's name is durable before ``current`` can point at it: otherwise a
        # crash could keep the new link and lose the rename, leaving ``current`` dangling
        # and no certificate in place (a journaled filesystem usually orders the two, but
        # nothing promises it).
        _sync_dir(versions)
        self._point_current_at(name, version)
        self._prune(name, keep)
        return version

    def rollback(self, name: str, version: str) -> None:
        """Make an older, still kept version current again."""
        if version not in self.versions(name):
            raise KeyError(f"certificate {name!r} has no version {version!r}")
        self._point_current_at(name, version)

    def _point_current_at(self, name: str, version: str) -> None:
        directory = self.root / name
        tmp = directory / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"versions/{version}", tmp)
        os.replace(tmp, directory / "current")
        _sync_dir(directory)

    def _prune(self, name: str, keep: int) -> None:
        current = self.current_version(name)
        versions_dir = self.root / name / "versions"
        old = [v for v in self.versions(name) if v != current]
        for version in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(versions_dir / version)
        for leftover in versions_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _sync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (names created, renamed or replaced) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist; never through a link), owner-only, durable."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, SECRET_MODE)
    try:
        os.fchmod(fd, SECRET_MODE)  # the umask may have narrowed it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _linked_dir(directory: Path) -> str:
    return (
        f"{directory}: a certificate directory is a symbolic link, which could lead its keys "
        "elsewhere; the store refuses it (move the real directory there)"
    )
