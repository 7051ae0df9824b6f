"""What the dashboard shows, read from the store: the lab's tiles, runs, cycles, spectra, events.

Every read runs in the dashboard's own thread on its own connection (`Reader`): SQLite lets a
reader and the daemon's writer work at once (WAL), so neither a 1.8 M-sample run nor a spectrum
fit ever holds up a channel. What is costly to make again — a run's plan for the time left, its
samples for the plot, a spectrum's fit — is kept between requests.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from cyclerd.analysis.eis_trends import ModelChoice, choose_circuit
from cyclerd.analysis.eisfit import FitInputError
from cyclerd.cli.status_view import Estimates, standing
from cyclerd.engine.states import FINAL, RunState
from cyclerd.store.database import Run, Store
from cyclerd.web.series import RunSeries

P = ParamSpec("P")
T = TypeVar("T")

SPARK_S = 3600.0  # a tile's sparkline: the last hour of the run
TREND_FITS = 24  # spectra fitted for a run's resistance trend: evenly spread, the latest always


@dataclass(frozen=True)
class ChannelInfo:
    """A channel as the lab names it: where its cell is and which cell it holds."""

    name: str
    source: str
    cell: str | None = None


class Reader:
    """The store as the dashboard reads it: one connection, in one thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-reads")
        self.series = RunSeries(self.store)
        self.estimates = Estimates()
        self.fits: dict[tuple[int, int], ModelChoice] = {}  # (run, spectrum sequence)

    def store(self) -> Store:
        """The reading thread's connection, opened on first use."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self.path)
        return store

    async def call(self, read: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(read, *args, **kwargs))

    def close(self) -> None:
        def closing() -> None:
            store = getattr(self._local, "store", None)
            if store is not None:
                store.close()
                self._local.store = None

        self._pool.submit(closing).result()
        self._pool.shutdown(wait=True)


# -- the lab ------------------------------------------------------------------------------


def channels_of_store(store: Store) -> list[ChannelInfo]:
    """The channels a store's runs and jobs name, for a store served without its lab.toml."""
    names = {run.channel for run in store.runs()} | {job["channel"] for job in store.jobs.list()}
    return [ChannelInfo(name, "recorded") for name in sorted(names)]


def lab_view(reader: Reader, lab: str, channels: Sequence[ChannelInfo], live: bool) -> dict[str, Any]:
    store = reader.store()
    runs = store.runs()
    queued: dict[str, int] = {}
    for job in store.jobs.list("queued"):
        queued[job["channel"]] = queued.get(job["channel"], 0) + 1
    tiles = []
    for channel in channels:
        active = [r for r in runs if r.channel == channel.name and r.state not in FINAL]
        tile: dict[str, Any] = {"name": channel.name, "source": channel.source, "cell": channel.cell}
        tile |= {"queued": queued.get(channel.name, 0), "spark": {"t": [], "voltage": []}}
        if active:
            tile |= _tile_of_run(reader, store, active[-1])
        else:
            tile |= {"run": None, "run_name": None, "state": "idle", "last_event": None}
        tiles.append(tile)
    return {"lab": lab, "live": live, "channels": tiles}


def _tile_of_run(reader: Reader, store: Store, run: Run) -> dict[str, Any]:
    stand = standing(store, run, reader.estimates)
    t, voltage = reader.series.tail(run.id, SPARK_S)
    rows = store.read(
        "SELECT t, unix, kind, message FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run.id,)
    )
    tile = {
        "run": run.id,
        "run_name": run.name,
        "state": run.state,
        "step_label": stand.step_label,
        "cycle": stand.cycle,
        "step_time_s": stand.step_time_s,
        "elapsed_s": stand.elapsed_s,
        "time_left_s": None if stand.left is None else stand.left.high,
        "time_left_min_s": None if stand.left is None else stand.left.low,
        "voltage": stand.voltage_V,
        "current": stand.current_A,
        "last_event": _event(rows[0]) if rows else None,
        "spark": {"t": t, "voltage": voltage},
    }
    if run.cell.get("cell"):
        tile["cell"] = run.cell["cell"]
    return tile


def _event(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"t_s": row["t"], "unix": row["unix"], "kind": row["kind"], "message": row["message"]}


# -- runs ----------------------------------------------------------------------------------


def runs_list(reader: Reader, filters: Mapping[str, str]) -> dict[str, Any]:
    """The run history, newest first, filtered by channel, cell, state and start date (local)."""
    since, until = _day(filters.get("since")), _day(filters.get("until"))
    rows = []
    for run in reversed(reader.store().runs()):
        cell = run.cell.get("cell")
        if filters.get("channel") and run.channel != filters["channel"]:
            continue
        if filters.get("cell") and filters["cell"].lower() not in str(cell or "").lower():
            continue
        if filters.get("state") and run.state != filters["state"]:
            continue
        if since is not None and run.started_unix < since:
            continue
        if until is not None and run.started_unix >= until + 86400:
            continue
        rows.append(_run_row(run))
    return {"runs": rows}


def _day(text: str | None) -> float | None:
    """The local midnight starting day `text` (YYYY-MM-DD); ValueError for anything else."""
    if not text:
        return None
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-12-07") from None
    return datetime.datetime(day.year, day.month, day.day).timestamp()


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "channel": run.channel,
        "cell": run.cell.get("cell"),
        "state": run.state,
        "started_unix": run.started_unix,
        "ended_unix": run.ended_unix,
    }


def queue_list(reader: Reader) -> dict[str, Any]:
    jobs = [j for j in reader.store().jobs.list() if j["state"] in ("queued", "running")]
    return {
        "jobs": [
            {
                "id": job["id"],
                "channel": job["channel"],
                "name": job["name"],
                "source": job["source"],
                "state": job["state"],
                "submitted_unix": job["submitted_unix"],
                "cell": job["cell"].get("cell"),
            }
            for job in jobs
        ]
    }


def run_view(reader: Reader, run_id: int) -> dict[str, Any]:
    """One run's header; KeyError when the store has no such run."""
    store = reader.store()
    run = store.run(run_id)
    counted = store.read(
        "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) AS n FROM sample_blocks WHERE run_id = ?",
        (run_id,),
    )
    links = {
        "report": f"/runs/{run_id}/report",
        "bdf_csv": f"/runs/{run_id}/export/bdf.csv",
        "bdf_parquet": f"/runs/{run_id}/export/bdf.parquet",
        "cycles_csv": f"/runs/{run_id}/export/cycles.csv",
    }
    return _run_row(run) | {
        "cell": run.cell,
        "source": str(run.source.get("path") or ""),
        "samples": int(counted[0]["n"]),
        "t_range": None,
        "links": links,
    }


def actions(state: str) -> list[str]:
    """What a run in `state` can be asked to do."""
    if state == RunState.RUNNING.value:
        return ["pause", "stop"]
    if state == RunState.PAUSED.value:
        return ["resume", "stop"]
    if state == RunState.CREATED.value:
        return ["stop"]
    return []


def cycles_view(reader: Reader, run_id: int) -> dict[str, Any]:
    store = reader.store()
    store.run(run_id)  # KeyError for an unknown run
    cycles = store.cycles(run_id)
    # As the report names them: a cycle that begins with negative current plates lithium (a
    # seed-layer half-cell); one that begins by charging is a full cell's.
    plating = bool(len(cycles["forward_sign"])) and float(cycles["forward_sign"][0]) < 0
    labels = ("plated", "stripped") if plating else ("charged", "discharged")
    ce = cycles["coulombic_efficiency"]
    cumulative = np.cumprod(ce)  # the paper's cumulative CE, as in the report: unknown after an unknown CE
    return {
        "cycle": cycles["cycle"].astype(int).tolist(),
        "forward_mAh": (cycles["forward_As"] / 3.6).tolist(),
        "reverse_mAh": (cycles["reverse_As"] / 3.6).tolist(),
        "forward_label": labels[0],
        "reverse_label": labels[1],
        "ce_percent": _percent(ce),
        "cumulative_ce_percent": _percent(cumulative),
    }


def _percent(fractions: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else 100.0 * float(v) for v in fractions]


def events_view(reader: Reader, run_id: int) -> dict[str, Any]:
    store = reader.store()
    store.run(run_id)
    return {"events": [_event(row) for row in store.events(run_id)]}


def spectrum_view(reader: Reader, run_id: int) -> dict[str, Any]:
    """The latest spectrum with its fit, and the fitted resistances' trend over the run: R_b,
    R_SEI (None where the spectrum does not need the SEI arc) and R_CT of TREND_FITS spectra
    spread over the run, the latest among them (each fit costs tens of milliseconds; kept)."""
    store = reader.store()
    store.run(run_id)
    spectra = store.spectra(run_id)
    if not spectra:
        return {"latest": None, "trend": {"t_s": [], "resistances_ohm": {}}}
    latest = spectra[-1]
    f, z = latest["frequency_Hz"], latest["impedance_ohm"]
    view: dict[str, Any] = {
        "sequence": latest["sequence"],
        "t_s": latest["t"],
        "cycle": latest["cycle"],
        "frequency_Hz": f,
        "z_real_ohm": z.real,
        "z_imag_ohm": z.imag,
        "fit": None,
    }
    choice = _fit(reader, run_id, latest)
    if choice.fit is not None:
        fitted = choice.fit.predict(f)
        parameters = {name: float(choice.fit[name]) for name in choice.fit.names}
        view["fit"] = {
            "z_real_ohm": fitted.real,
            "z_imag_ohm": fitted.imag,
            "circuit": choice.fit.circuit.text,
            "parameters": parameters,
        }
    picked = np.unique(np.linspace(0, len(spectra) - 1, min(TREND_FITS, len(spectra))).round().astype(int))
    chosen = [_fit(reader, run_id, spectra[i]) for i in picked]
    trend = {
        "t_s": [spectra[i]["t"] for i in picked],
        "resistances_ohm": {
            "R_b": [c.r_b[0] for c in chosen],
            "R_SEI": [c.r_sei[0] for c in chosen],
            "R_CT": [c.r_ct[0] for c in chosen],
        },
    }
    return {"latest": view, "trend": trend}


def _fit(reader: Reader, run_id: int, spectrum: Mapping[str, Any]) -> ModelChoice:
    key = (run_id, int(spectrum["sequence"]))
    if key not in reader.fits:
        try:
            reader.fits[key] = choose_circuit(spectrum["frequency_Hz"], spectrum["impedance_ohm"])
        except FitInputError as exc:
            reader.fits[key] = ModelChoice(None, False, math.nan, f"unusable spectrum: {exc}")
    return reader.fits[key]
