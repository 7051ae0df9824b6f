"""The run page's plot of a 470 h run: what answering `GET /api/runs/{id}/series` costs, against
reading the same columns (t, voltage, current) from the store alone.

One run of 1.8 M samples (E1-like: an hour of plating with its nucleation dip, an hour of
stripping up to the 1 V cutoff, noise, one short spike), written as 3600 batches of 500 through
Store.append_samples. Then, best of --repeat each:

- read: t, voltage and current of the whole run from the store (Store.sample_columns), the baseline;
- first open: RunSeries.window(run, None, None, 1600) on a new, empty cache: what opening the run
  page costs (read, then 1600 min/max buckets); target <= 2x read and < 1 s;
- zoom: a window of a twentieth of the run on the warm cache (the store asked only for new blocks);
- sparkline: RunSeries.tail(run, 3600) of a run not held, as the lab page's tiles ask.

Printed: each in ms and its ratio to `read`. `measure` returns the figures by name, so another
measurement of the same store (say, the endpoint through the real server) adds one entry and
`report` prints its ratio too.

Run: .venv/bin/python bench/dashboard.py [--samples 1800000] [--batch 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cyclerd.store.database import Store
from cyclerd.web.series import RunSeries

SAMPLES = 1_800_000
BATCH = 500
HOURS = 470.0
AREA_CM2 = 0.785
PLATE_S, STRIP_S = 3600.0, 3586.0  # 1 mAh/cm^2 at 1 mA/cm^2, stripped at 99.6 % CE


def e1_like(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Voltage and current of a seed-layer half-cell cycled as E1, vectorised over test time."""
    phase = t % (PLATE_S + STRIP_S)
    plating = phase < PLATE_S
    strip = np.clip((phase - PLATE_S) / STRIP_S, 0.0, 1.0)
    voltage = np.where(
        plating,
        -0.012 - 0.03 * np.exp(-phase / 60.0),  # the nucleation dip, then the plating plateau
        0.012 + 0.988 * strip**60,  # the stripping plateau, then the rise to the 1 V cutoff
    )
    voltage += rng.normal(0.0, 3e-4, len(t))
    voltage[len(t) * 2 // 3] = -0.35  # one short spike: the plot must keep it at any zoom
    current = np.where(plating, -1e-3, 1e-3) * AREA_CM2 + rng.normal(0.0, 1e-7, len(t))
    return voltage, current


def make_store(path: Path, samples: int = SAMPLES, batch: int = BATCH) -> int:
    """A store at `path` holding one E1-like run of `samples` over 470 h; its run id."""
    rng = np.random.default_rng(1)
    t = np.linspace(0.0, HOURS * 3600.0, samples)
    voltage, current = e1_like(t, rng)
    cycle = 1 + (t // (PLATE_S + STRIP_S)).astype(np.int64)
    step = 2 * cycle - (t % (PLATE_S + STRIP_S) < PLATE_S)
    with Store(path) as store:
        run = store.create_run("E1 plating/stripping", "ch1", "", {"area_m2": AREA_CM2 * 1e-4}, {})
        for a in range(0, samples, batch):
            part = slice(a, a + batch)
            store.append_samples(
                run,
                {
                    "seq": np.arange(a, min(a + batch, samples)),
                    "t": t[part],
                    "step": step[part],
                    "cycle": cycle[part],
                    "voltage": voltage[part],
                    "current": current[part],
                    "charge": current[part] * (t[part] % (PLATE_S + STRIP_S)),
                    "energy": np.zeros(len(t[part])),
                },
            )
    return run


def best_of(repeat: int, measured: Callable[[], object]) -> float:
    """The shortest of `repeat` timings of `measured`, in ms."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        measured()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def measure(path: Path, run: int, repeat: int = 5) -> dict[str, float]:
    """ms by name, `read` first (the baseline the others are divided by)."""
    with Store(path) as store:
        read = best_of(repeat, lambda: store.sample_columns(run))
        first_open = best_of(repeat, lambda: RunSeries(store).window(run, None, None, 1600))
        warm = RunSeries(store)
        whole = warm.window(run, None, None, 1600)
        assert whole["t_range"] is not None
        t0, t1 = whole["t_range"]
        middle, width = (t0 + t1) / 2, (t1 - t0) / 20
        zoom = best_of(repeat, lambda: warm.window(run, middle - width / 2, middle + width / 2, 1600))
        sparkline = best_of(repeat, lambda: RunSeries(store).tail(run, 3600.0))
    return {"read": read, "first open": first_open, "zoom": zoom, "sparkline": sparkline}


def report(timings: dict[str, float], baseline: str = "read") -> None:
    for name, ms in timings.items():
        print(f"{name:<28} {ms:>9.1f} ms   {ms / timings[baseline]:>6.2f} x {baseline}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.db"
        start = time.perf_counter()
        run = make_store(path, options.samples, options.batch)
        print(
            f"store: {options.samples:,} samples in {-(-options.samples // options.batch):,} batches,"
            f" written in {time.perf_counter() - start:.1f} s; best of {options.repeat}:"
        )
        timings = measure(path, run, options.repeat)
    report(timings)
    ratio = timings["first open"] / timings["read"]
    print(f"first open: {ratio:.2f} x read (target <= 2), {timings['first open']:.0f} ms (target < 1000)")
    return 0 if ratio <= 2 and timings["first open"] < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
