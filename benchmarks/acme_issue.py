"""ACME issuance, side by side against one Pebble: our CLI, certbot and lego.

    .venv/bin/python benchmarks/acme_issue.py [--runs N] [--bulk M]

Each client issues N fresh certificates through http-01 (a new process each time, as a
user or a cron job would run it); then `secure-etl certs renew --all --force` renews M
configured certificates concurrently. Prints a table, then one JSON line of the figures.
Needs Debian's pebble, certbot and lego.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from secure_etl_tests.servers import Pebble  # noqa: E402

BIN = Path(sys.executable).parent


def _timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def ours(pebble: Pebble, work: Path, i: int) -> float:
    return _timed(
        [
            str(BIN / "secure-etl"),
            "acme",
            "issue",
            "-d",
            f"ours{i}.example.com",
            "--directory",
            pebble.directory_url,
            "--ca-bundle",
            str(pebble.ca_bundle),
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            str(pebble.http_port),
            "--account-key",
            str(work / "ours-account.key"),
            "--out",
            str(work / f"ours{i}"),
        ],
        dict(os.environ),
    )


def certbot(pebble: Pebble, work: Path, i: int) -> float:
    dirs = [
        "--config-dir",
        str(work / "certbot"),
        "--work-dir",
        str(work / "certbot-work"),
        "--logs-dir",
        str(work / "certbot-logs"),
    ]
    return _timed(
        [
            "certbot",
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
            "--server",
            pebble.directory_url,
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            str(pebble.http_port),
            "-d",
            f"certbot{i}.example.com",
            "--key-type",
            "ecdsa",
            *dirs,
        ],
        dict(os.environ, REQUESTS_CA_BUNDLE=str(pebble.ca_bundle)),
    )


def lego(pebble: Pebble, work: Path, i: int) -> float:
    return _timed(
        [
            "lego",
            "--server",
            pebble.directory_url,
            "--accept-tos",
            "--email",
            "b@example.com",
            "--domains",
            f"lego{i}.example.com",
            "--http",
            "--http.port",
            f"127.0.0.1:{pebble.http_port}",
            "--key-type",
            "ec256",
            "--path",
            str(work / "lego"),
            "run",
        ],
        dict(os.environ, LEGO_CA_CERTIFICATES=str(pebble.ca_bundle)),
    )


def start_to_first_request(work: Path) -> float:
    """Seconds from launching `secure-etl acme issue` to its first connection to the CA."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                str(BIN / "secure-etl"),
                "acme",
                "issue",
                "-d",
                "a.example.com",
                "--directory",
                f"https://127.0.0.1:{port}/dir",
                "--http-01-port",
                "1",
                "--account-key",
                str(work / "start-account.key"),
                "--out",
                str(work / "start"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        conn, _ = listener.accept()
        elapsed = time.perf_counter() - started
        conn.close()
        proc.wait(30)
    return elapsed


def bulk_renewal(pebble: Pebble, work: Path, count: int, jobs: int) -> float:
    roots = work / "roots.pem"
    roots.write_bytes(pebble.issuing_roots())
    config = {
        "state_dir": str(work / "bulk-state"),
        "issuers": {
            "pebble": {
                "type": "acme",
                "directory_url": pebble.directory_url,
                "server_ca_bundle": str(pebble.ca_bundle),
                "trust_bundle": str(roots),
                "challenge": {"type": "http-01", "address": "127.0.0.1", "port": pebble.http_port},
            }
        },
        "certificates": {
            f"svc{i}": {"issuer": "pebble", "use": "server", "identifiers": [f"svc{i}.example.com"]}
            for i in range(count)
        },
    }
    path = work / "bulk.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, SECURE_ETL_CONFIG=str(path))
    renew = [str(BIN / "secure-etl"), "certs", "renew", "--all", "--jobs", str(jobs)]
    _timed(renew, env)  # first issuance
    return _timed([*renew, "--force"], env)


def compile_package() -> None:
    """Write the package's bytecode, as installing it does (and as Debian has for
    certbot): without it (PYTHONDONTWRITEBYTECODE, a read-only tree) every run would
    compile each module from source and measure that instead."""
    import compileall

    import secure_etl

    compileall.compile_dir(Path(secure_etl.__file__).parent, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bulk", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    compile_package()
    for tool in ("pebble", "certbot", "lego"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: apt-get install {tool}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pebble = Pebble(work / "pebble").start()
        try:
            times: dict[str, list[float]] = {"secure_etl": [], "certbot": [], "lego": []}
            for i in range(args.runs):  # interleaved, so drift hits every client alike
                times["secure_etl"].append(ours(pebble, work, i))
                times["certbot"].append(certbot(pebble, work, i))
                times["lego"].append(lego(pebble, work, i))
            bulk_s = bulk_renewal(pebble, work, args.bulk, args.jobs)
            start_s = statistics.median(start_to_first_request(work) for _ in range(5))
        finally:
            pebble.stop()

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'client':<12} {'median s/cert':>14} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:<12} {median[name]:>14.3f} {min(values):>8.3f} {max(values):>8.3f}")
    print(f"bulk renewal of {args.bulk} certificates ({args.jobs} at once): {bulk_s:.2f} s")
    print(f"secure-etl start to first request: {start_s:.3f} s")
    figures = {
        "runs": args.runs,
        "secure_etl_s_per_cert": round(median["secure_etl"], 3),
        "certbot_s_per_cert": round(median["certbot"], 3),
        "lego_s_per_cert": round(median["lego"], 3),
        "ratio_vs_certbot": round(median["secure_etl"] / median["certbot"], 3),
        "ratio_vs_lego": round(median["secure_etl"] / median["lego"], 3),
        "bulk_renewal_certs": args.bulk,
        "bulk_renewal_s": round(bulk_s, 2),
        "cli_start_to_first_request_s": round(start_s, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
