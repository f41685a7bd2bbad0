"""The soak (``python -m bench.soak``) at a reduced size: a real server process, real kills, nothing left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from ..helpers import bounded

# The repository's root: the soak runs as a module of its bench package, against this checkout.
ROOT = Path(__file__).resolve().parents[2]


@bounded(240)
async def test_soak_reduced(cache_dir, tmp_path):
    report_path = tmp_path / "soak.json"
    result = await trio.run_process(
        [sys.executable, "-m", "bench.soak", "--requests", "400", "--concurrency", "16", "--kills", "3",
         "--cache-dir", str(cache_dir), "--json", str(report_path)],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert report_path.exists(), result.stderr.decode()[-3000:]
    report = json.loads(report_path.read_text())
    assert result.returncode == 0 and report["passed"], json.dumps(report, indent=2)
    # The kills and hang-ups did happen, and most requests still succeeded.
    assert report["kills"] == 3
    assert report["outcomes"].get("hung_up", 0) > 0
    assert report["outcomes"]["ok"] > 300
