"""Shared helpers of the Python package's tests: the repository root and the `lossc` command line (the
oracle the Python errors and results are compared with)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lossc_bin() -> str:
    """The CLI `.ci/run` built (LOSSC_BIN), or one in target/ or on PATH."""
    for candidate in (os.environ.get("LOSSC_BIN"), ROOT / "target/debug/lossc", ROOT / "target/release/lossc", shutil.which("lossc")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("the lossc command line is not built (cargo build); .ci/run sets LOSSC_BIN")


def cli(*args, check=True) -> subprocess.CompletedProcess:
    run = subprocess.run([lossc_bin(), *map(str, args)], capture_output=True, text=True)
    if check and run.returncode != 0:
        raise AssertionError(f"lossc {' '.join(map(str, args))} failed:\n{run.stderr}")
    return run
