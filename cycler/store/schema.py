"""The store's SQLite schema, and the column order its array readers and writers share.

One page to read the tables from; `cyclerd.store.database` re-exports all three
names, the way callers import them.
"""

VERSION = 2  # PRAGMA user_version: 0 stored one row per sample, 1 no job reasons (store.migrate)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    channel TEXT NOT NULL,
    protocol TEXT NOT NULL,          -- the protocol file's text, as run
    cell TEXT NOT NULL,              -- JSON: area, capacity, metadata
    source TEXT NOT NULL,            -- JSON: simulator preset and seed, or instrument resource
    state TEXT NOT NULL,
    started_unix REAL NOT NULL,
    ended_unix REAL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    number INTEGER NOT NULL,         -- 1, 2, ... in the order the run executed them
    command INTEGER NOT NULL,        -- StepCommand.index in the compiled program
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL,
    end_reason TEXT,
    charge_As REAL,
    energy_J REAL,
    PRIMARY KEY (run_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample_blocks (  -- samples, one row per batch (cyclerd.store.blocks)
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,      -- the block holds seq first_seq..last_seq, one sample each
    last_seq INTEGER NOT NULL,       -- seq: 0, 1, 2, ... per run; gaps are visible between blocks
    t BLOB NOT NULL,                 -- float64 little-endian: test time, s
    step BLOB NOT NULL,              -- int64 little-endian: steps.number
    cycle BLOB NOT NULL,             -- int64 little-endian
    voltage BLOB NOT NULL,           -- float64: V
    current BLOB NOT NULL,           -- float64: A, positive charges the cell
    charge BLOB NOT NULL,            -- float64: A·s passed in this step so far
    energy BLOB NOT NULL,            -- float64: J passed in this step so far
    temperature BLOB                 -- float64 (NaN where unknown); NULL: none in this block
);
CREATE UNIQUE INDEX IF NOT EXISTS sample_blocks_seq ON sample_blocks (run_id, last_seq);
CREATE TABLE IF NOT EXISTS spectra (
    run_id INTEGER NOT NULL,
    sequence INTEGER NOT NULL,       -- 1, 2, ... per run
    point INTEGER NOT NULL,
    t REAL NOT NULL,
    step INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    frequency REAL NOT NULL,
    z_real REAL NOT NULL,
    z_imag REAL NOT NULL,
    PRIMARY KEY (run_id, sequence, point)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    t REAL,
    unix REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id);  -- a run's events, and its latest
CREATE TABLE IF NOT EXISTS bus_marks (  -- per run the bus took on, the last of each kind the MQTT
    run_id INTEGER PRIMARY KEY,         -- broker acknowledged (cyclerd.store.marks)
    data INTEGER NOT NULL,           -- sample seq (-1: none)
    events INTEGER NOT NULL,         -- events.id (0: none)
    eis INTEGER NOT NULL             -- spectra.sequence (0: none)
);
CREATE TABLE IF NOT EXISTS cycles (  -- written when a cycle ends, from its stored samples
    run_id INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    forward_sign INTEGER NOT NULL,   -- -1: starts by plating/discharging, +1: by charging
    forward_As REAL NOT NULL,
    reverse_As REAL NOT NULL,
    forward_J REAL NOT NULL,
    reverse_J REAL NOT NULL,
    forward_mean_V REAL,
    reverse_mean_V REAL,
    duration_s REAL NOT NULL,
    coulombic_efficiency REAL,
    PRIMARY KEY (run_id, cycle)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cycle_references (  -- the cycle a cycle's capacity retention is measured
    run_id INTEGER NOT NULL,                    -- against: the first cycle of its loop
    cycle INTEGER NOT NULL,
    reference_cycle INTEGER NOT NULL,
    PRIMARY KEY (run_id, cycle)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (  -- the queue: protocols waiting for a channel
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    name TEXT NOT NULL,
    protocol TEXT NOT NULL,          -- the file's text at submission: later edits do not leak in
    source TEXT NOT NULL,            -- where it came from (path)
    cell TEXT NOT NULL,              -- JSON: cell id, area, capacity given at submission
    state TEXT NOT NULL,             -- queued, running, done, refused, failed, stopped
    submitted_unix REAL NOT NULL,
    run_id INTEGER,
    reason TEXT                      -- why it was refused or failed, in the daemon's words
);
CREATE TABLE IF NOT EXISTS requests (  -- pause/resume/stop asked for by a person, acted on by the daemon
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    requested_unix REAL NOT NULL,
    handled_unix REAL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (  -- where each run stands, committed with its samples
    run_id INTEGER PRIMARY KEY,
    t REAL NOT NULL,                 -- test time of the checkpoint
    unix REAL NOT NULL,              -- wall time it was written: a restart measures its gap from it
    state TEXT NOT NULL
);
"""

CYCLE_COLUMNS = (
    "cycle",
    "forward_sign",
    "forward_As",
    "reverse_As",
    "forward_J",
    "reverse_J",
    "forward_mean_V",
    "reverse_mean_V",
    "duration_s",
    "coulombic_efficiency",
)
SAMPLE_COLUMNS = (
    "seq",
    "t",
    "step",
    "cycle",
    "voltage",
    "current",
    "charge",
    "energy",
    "temperature",
)
