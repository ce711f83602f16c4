"""Start-up time of the `secure-etl` commands, side by side with the interpreter's own.

    .venv/bin/python benchmarks/cli_startup.py [--runs N]

Sets up a platform in a temporary directory (an internal CA with the two test
certificates issued, a pseudonym key, an encrypted value, audit records with a signed
checkpoint and the key pinned, a Dagster home with the repository's dagster.yaml as
`make demo` makes it), then runs each command N times as a user would: the installed
console script, a new process each time. Interleaved with them, in the same rounds, run
the peers: a bare `python -c pass` (the floor every command pays), `python -c "import
pandas"` (what the certificate, audit and key commands used to load) and `python -c
"import dagster"` (the floor of `status`, which reads the Dagster instance), so the
ratios mean something on a busy machine. Prints a table (median wall seconds, median CPU
seconds of the process), then one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from secure_etl_tests.conftest import BASE_CONFIG  # noqa: E402

BIN = Path(sys.executable).parent
PEERS = ("python_startup", "import_pandas", "import_dagster")
# Issue 14's targets, in seconds on the development machine.
TARGETS = {
    "certs_list": 0.3,
    "audit_verify": 0.3,
    "keys_pseudonym": 0.3,
    "keys_decrypt": 0.3,
    "status": 1.5,
}


def _run(argv: list[str], env: dict, stdin: str, codes: tuple[int, ...]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in codes:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _cli(*args: str) -> list[str]:
    return [str(BIN / "secure-etl"), *args]


def set_up(work: Path) -> tuple[dict, str]:
    """A platform under ``work``: the environment for its commands, and an encrypted value."""
    import pyarrow as pa

    from secure_etl.config import load_config
    from secure_etl.etl.protect import ColumnCipher
    from secure_etl.security.audit import key_pin, load_signing_key
    from secure_etl.security.audit_trail import platform_audit_log
    from secure_etl.security.hmac_keys import load_key_ring

    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = str(work / "state")
    config = work / "platform.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (work / "dagster_home").mkdir()
    # The instance settings `make demo` and `make dev` copy into their home.
    (work / "dagster_home" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = dict(os.environ, SECURE_ETL_CONFIG=str(config), DAGSTER_HOME=str(work / "dagster_home"))
    _run(_cli("certs", "renew", "--all"), env, "", (0,))
    _run(_cli("keys", "pseudonym", "pseudo-1"), env, "alice\nbob\n", (0,))
    platform = load_config(config)
    log = platform_audit_log(platform)
    log.checkpoint()
    pin = key_pin(load_signing_key(log.signing_key_path).public_key())
    data["audit"] = {"public_key": pin}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    ring = load_key_ring("pseudo-1", platform.keys["pseudo-1"], platform.resolved_state_dir())
    [(key_id, key)] = ring.items()
    cipher = ColumnCipher(key.secret, key_id, deterministic=False)
    value = cipher.column(pa.array(["+1 555 0100"]), "phone")[0].as_py()
    _run(_cli("status"), env, "", (0, 1))  # creates the instance's storage once
    return env, value


def compile_package() -> None:
    """Write the package's bytecode, as installing it does: without it
    (PYTHONDONTWRITEBYTECODE, a read-only tree) every run would compile each module
    from source and measure that instead."""
    import compileall

    import secure_etl

    compileall.compile_dir(Path(secure_etl.__file__).parent, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    compile_package()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        env, value = set_up(Path(tmp))
        # name -> (argv, stdin, accepted exit codes); status exits 1 while nothing has run.
        cases = {
            "python_startup": ([python, "-c", "pass"], "", (0,)),
            "import_pandas": ([python, "-c", "import pandas"], "", (0,)),
            "import_dagster": ([python, "-c", "import dagster"], "", (0,)),
            "help": (_cli("--help"), "", (0,)),
            "certs_list": (_cli("certs", "list"), "", (0,)),
            "audit_verify": (_cli("audit", "verify"), "", (0,)),
            "keys_pseudonym": (_cli("keys", "pseudonym", "pseudo-1"), "alice\n", (0,)),
            "keys_decrypt": (
                _cli("keys", "decrypt", "pseudo-1", "--column", "phone"),
                value + "\n",
                (0,),
            ),
            "status": (_cli("status"), "", (0, 1)),
        }
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so drift hits every command alike
            for name, (argv, stdin, codes) in cases.items():
                w, c = _run(argv, env, stdin, codes)
                wall[name].append(w)
                cpu[name].append(c)

    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    base, pandas = median["python_startup"], median["import_pandas"]
    print(f"{'command':<16} {'median s':>9} {'min':>7} {'cpu s':>7} {'x python':>9} {'target':>7}")
    for name in cases:
        target = f"{TARGETS[name]:.1f}" if name in TARGETS else ""
        print(
            f"{name:<16} {median[name]:>9.3f} {min(wall[name]):>7.3f} {median_cpu[name]:>7.3f} "
            f"{median[name] / base:>9.1f} {target:>7}"
        )
    figures: dict[str, float | int] = {"runs": args.runs}
    for name in cases:
        figures[f"{name}_s"] = round(median[name], 3)
        figures[f"{name}_cpu_s"] = round(median_cpu[name], 3)
    for name in cases:
        if name not in PEERS:
            figures[f"{name}_ratio_vs_python_startup"] = round(median[name] / base, 2)
            figures[f"{name}_ratio_vs_import_pandas"] = round(median[name] / pandas, 2)
    figures["status_ratio_vs_import_dagster"] = round(
        median["status"] / median["import_dagster"], 2
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
