"""The internal CA issues what each use needs; the store swaps versions safely."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from secure_etl.pki import store as store_module
from secure_etl.pki.inspect import inspect_chain, load_chain_file, load_pem_chain
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import KEY_TYPES, generate_private_key
from secure_etl.pki.store import CertificateStore, StoreLocked


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path) -> InternalCA:
    return InternalCA("test", tmp_path / "ca", lifetime_days=30)


def test_the_root_is_created_once_with_an_owner_only_key(ca, tmp_path):
    root, _ = ca.ensure_root()
    assert _mode(ca.key_path) == 0o600
    again, _ = InternalCA("test", tmp_path / "ca").ensure_root()
    assert again == root
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("use", ["server", "client"])
def test_leaves_have_the_eku_and_sans_of_their_use(ca, use):
    issued = ca.issue(["db.internal", "10.1.2.3"], use, generate_private_key("ec256"))
    cert = load_pem_chain(issued.cert_pem, "leaf")[0]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    wanted = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
    assert list(eku) == [wanted[use]]
    results = inspect_chain(
        [cert], identifiers=["db.internal", "10.1.2.3"], use=use, roots=[ca.ensure_root()[0]]
    )
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_can_be_issued(ca, key_type):
    issued = ca.issue(["k.internal"], "server", generate_private_key(key_type))
    cert = load_pem_chain(issued.cert_pem, "leaf")[0]
    assert inspect_chain([cert], roots=[ca.ensure_root()[0]])[3].passed  # key_strength


def test_a_leaf_never_outlives_its_root(tmp_path):
    short = InternalCA("short", tmp_path / "short", ca_lifetime_days=10, lifetime_days=90)
    issued = short.issue(["x.internal"], "server", generate_private_key("ec256"))
    cert = load_pem_chain(issued.cert_pem, "leaf")[0]
    assert cert.not_valid_after_utc == short.ensure_root()[0].not_valid_after_utc


def _install(store, ca, name="svc", keep=5):
    with store.lock(name):
        return store.install(
            name, ca.issue(["svc.internal"], "server", generate_private_key("ec256")), keep=keep
        )


def test_install_points_current_at_a_complete_owner_only_version(ca, tmp_path):
    store = CertificateStore(tmp_path / "certs")
    version = _install(store, ca)
    paths = store.paths("svc")
    assert os.readlink(paths.current) == f"versions/{version}"
    assert _mode(paths.privkey) == 0o600
    assert load_chain_file(paths.fullchain)[0] == load_chain_file(paths.cert)[0]


def test_a_new_version_s_name_is_durable_before_current_points_at_it(ca, tmp_path, monkeypatch):
    store = CertificateStore(tmp_path / "certs")
    _install(store, ca)  # the directories exist
    events = []
    real_rename, real_replace, real_fsync = os.rename, os.replace, os.fsync

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", os.path.basename(dst)))
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    version = _install(store, ca)
    order = [
        e for e in events if e[0] != "sync" or e[1] in ("versions", "svc", f".staging-{version}")
    ]
    assert order == [
        ("sync", f".staging-{version}"),  # the files' names, before they are published
        ("rename", version),
        ("sync", "versions"),  # the version's name, before current can point at it
        ("replace", "current"),
        ("sync", "svc"),
    ], events


def test_old_versions_are_pruned_and_one_can_be_rolled_back(ca, tmp_path):
    store = CertificateStore(tmp_path / "certs")
    versions = [_install(store, ca, keep=3) for _ in range(5)]
    assert store.versions("svc") == versions[-3:]
    store.rollback("svc", versions[-2])
    assert store.current_version("svc") == versions[-2]
    with pytest.raises(KeyError, match="no version"):
        store.rollback("svc", versions[0])


def test_readers_always_see_a_whole_certificate_while_it_is_replaced(ca, tmp_path):
    store = CertificateStore(tmp_path / "certs")
    _install(store, ca)
    fullchain = store.paths("svc").fullchain
    errors, stop = [], threading.Event()

    def read_constantly():
        while not stop.is_set():
            try:
                load_chain_file(fullchain)
            except Exception as err:  # noqa: BLE001 (any failure is the finding)
                errors.append(err)

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for _ in range(20):
            _install(store, ca)
    finally:
        stop.set()
        reader.join()
    assert errors == []


def test_a_second_process_holding_the_lock_blocks_renewal(tmp_path):
    store = CertificateStore(tmp_path / "certs")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from secure_etl.pki.store import CertificateStore as S\n"
            f"with S({str(tmp_path / 'certs')!r}).lock('svc'):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLocked, match="locked by another renewal"):
            with store.lock("svc", timeout_s=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("svc", timeout_s=5):  # released when the holder died
        pass


def test_an_interrupted_install_leaves_the_previous_version_and_no_debris(
    ca, tmp_path, monkeypatch
):
    store = CertificateStore(tmp_path / "certs")
    before = _install(store, ca)

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_write_new", crash)
    with pytest.raises(OSError, match="disk full"):
        _install(store, ca)

    assert store.current_version("svc") == before
    assert store.versions("svc") == [before]
    assert not list((tmp_path / "certs" / "svc" / "versions").glob(".staging-*"))


def test_the_internal_ca_leaves_renewal_to_our_schedule_and_ignores_the_previous_leaf(ca):
    first = ca.issue(["r.internal"], "server", generate_private_key("ec256"))
    leaf = x509.load_pem_x509_certificate(first.cert_pem)
    second = ca.issue(["r.internal"], "server", generate_private_key("ec256"), previous=leaf)
    assert ca.renewal_due(leaf) is None
    assert x509.load_pem_x509_certificate(second.cert_pem).serial_number != leaf.serial_number
    assert first.order_url is None
