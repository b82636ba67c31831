"""Every benchmark script runs end to end in its smoke size (the full runs are bench/README.md's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SCRIPTS = ["throughput", "round_overhead", "speedup", "memory", "sync_rounds", "time_to_target", "reference_accuracy",
           "data_scale"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_smoke(script):
    proc = subprocess.run([sys.executable, f"bench/{script}.py", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((ROOT / "bench/results/smoke" / f"{script}.json").read_text())
    assert result
    if script == "speedup":
        assert (ROOT / "bench/results/smoke/speedup.png").stat().st_size > 1000
