"""What `make test` covers, and what it gives up by leaving out the long end-to-end tests.

    .venv/bin/python benchmarks/coverage_split.py [--out coverage_out]

Runs the suite twice under coverage (Python subprocesses included: ``patch = subprocess``,
``parallel = true``), in 2 pytest-xdist processes as ``make test`` does: once as ``make test``
(``-m "not e2e"``), once the ``e2e`` tests alone. Prints the statements ``make test`` covers over
the project's code, and the lines only the e2e tests reach, per file. About 17 minutes on 2 cores.
Writes OUT/main.json and OUT/e2e.json (``coverage json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMIT = (
    ".venv/*",
    "tests/*",
    "benchmarks/*",
    "rehearsal/*",
    "claims_out*/*",
    "demo_out/*",
    "datasets/*",
    "banks/*",
    "runs/*",
)


def rcfile(out: Path) -> Path:
    path = out / "coveragerc"
    omit = "\n".join(f"    {ROOT / p}" for p in OMIT)
    path.write_text(
        f"[run]\nparallel = true\npatch = subprocess\nsource = {ROOT}\nomit =\n{omit}\n    /tmp/*\n"
        "disable_warnings = no-data-collected, module-not-measured, module-not-imported, "
        "couldnt-parse\n"
    )
    return path


def measure(out: Path, name: str, marks: str, rc: Path) -> dict:
    """Run the tests selected by ``marks`` under coverage; their ``coverage json`` report."""
    data = out / name
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = {
        **os.environ,
        "COVERAGE_RCFILE": str(rc),
        "COVERAGE_FILE": str(data / ".coverage"),
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "run",
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadfile",
            "-m",
            marks,
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    print(f"{name}: tests under coverage in {(time.perf_counter() - start) / 60:.1f} min")
    for command in (["combine", "-q", "."], ["json", "-q", "-o", str(out / f"{name}.json")]):
        subprocess.run([sys.executable, "-m", "coverage", *command], cwd=data, env=env, check=True)
    return json.loads((out / f"{name}.json").read_text())["files"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="coverage_out")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rc = rcfile(out)
    main_files = measure(out, "main", "not e2e", rc)
    e2e_files = measure(out, "e2e", "e2e", rc)
    total = sum(f["summary"]["num_statements"] for f in main_files.values())
    covered = sum(f["summary"]["covered_lines"] for f in main_files.values())
    print(f"make test covers {covered} of {total} statements ({100 * covered / total:.1f}%)")
    only = {
        name: sorted(
            set(f["executed_lines"]) - set(main_files.get(name, {}).get("executed_lines", []))
        )
        for name, f in e2e_files.items()
    }
    only = {k: v for k, v in only.items() if v}
    print(f"lines only the e2e tests reach: {sum(map(len, only.values()))}")
    for name, lines in sorted(only.items(), key=lambda kv: -len(kv[1])):
        print(
            f"  {Path(name).relative_to(ROOT)}: {len(lines)} ({', '.join(map(str, lines[:12]))}"
            f"{', ...' if len(lines) > 12 else ''})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
