"""Runs the kernel checks (`kcheck_*.py` beside this file) under Triton's interpreter, in a subprocess.

Triton decides at import time whether `@triton.jit` compiles or interprets (TRITON_INTERPRET), so the
checks get a fresh interpreter with the variable set, and the rest of the test session never sees it.
Run them directly with: TRITON_INTERPRET=1 pytest -o python_files='kcheck_*.py' tests/formats/kernels
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_kernels_match_torch_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_files=kcheck_*.py", str(HERE)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
