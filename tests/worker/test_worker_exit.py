"""The worker process's exit: its code and its last output, without the interpreter's teardown (worker/__main__.py)."""

from __future__ import annotations

import subprocess
import sys

# ``python -m mlxtrio.worker`` with its main loop replaced by one that prints and returns a code at once.
PROBE = """
import atexit, runpy, sys
import mlxtrio.worker._main as worker_main

def main(argv):
    print("last words", end="")
    print("last error words", end="", file=sys.stderr)
    return 3

worker_main.main = main
atexit.register(lambda: print("torn down", file=sys.stderr))
runpy.run_module("mlxtrio.worker", run_name="__main__")
"""


def test_the_worker_exits_with_its_code_and_output_without_tearing_the_interpreter_down():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "last words"
    # No atexit handler ran: the interpreter was not torn down, module by module, before the exit.
    assert result.stderr == "last error words"
