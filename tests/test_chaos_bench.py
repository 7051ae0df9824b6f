"""bench/chaos.py, the chaos run of issue 16, at its smallest: two kills under a simulated and an
emulated channel, and one instrument fault. It guards the script against rotting as the daemon,
the CLI and the fault table change; the acceptance figures come from its default size.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"
TINY = [
    "--kills", "2", "--mean-up", "1.5",
    "--sims", "1", "--sim-cycles", "5", "--sim-jobs", "1",
    "--instruments", "keithley2450", "--speed", "120",
    "--drain", "2", "--faults", "keithley2450: garbled reply",
]  # fmt: skip


@pytest.mark.slow
def test_the_chaos_run_counts_every_sample_and_judges_a_fault(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("the chaos run needs a real broker: no `mosquitto` installed")
    figures_file = tmp_path / "figures.json"
    where = ["--workdir", str(tmp_path / "run"), "--json", str(figures_file)]
    args = [sys.executable, str(CHAOS), *TINY, *where]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_file.read_text())
    assert [start["ended"] for start in figures["starts"]] == ["killed", "killed", "exit 0"]
    runs = figures["runs"]
    last = {run["channel"]: run for run in runs}  # each job's last run (runs come in id order)
    assert {channel: last[channel]["state"] for channel in last} == {"sim1": "completed", "smu": "completed"}
    assert all(run["stored"] > 0 for run in last.values())
    for run in runs:
        if run is not last[run["channel"]]:  # killed before its first commit: its job ran again
            assert (run["state"], run["stored"]) == ("stopped", 0), run
            assert "no checkpoint yet" in run["where"], run
    for name in ("lost", "dup", "unpublished", "unstored"):
        assert sum(run[name] for run in runs) == 0, (name, runs)
    assert figures["integrity"] == "ok"
    assert [(fault["fault"], fault["handled"]) for fault in figures["faults"]] == [("garbled reply", True)]
    assert figures["leftovers"] == []
    assert "every target met" in done.stdout
