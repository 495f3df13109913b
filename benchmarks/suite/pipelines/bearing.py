"""bearing — MaFaulDa-style 8-channel machinery vibration; classify a segment as imbalance or normal.

Features (sql/bearing_imbalance.sql): the mean absolute level (AVG of abs) of each of the 8
channels over the requested segment (one aggregate query, WHERE machine AND segment). Plain
means carry no signal (every channel oscillates around zero), mean absolute levels do. Model: a
small MLP behind a StandardScaler.

Data: ``vibrations`` of 10 machines, 32 recorded segments each, sampled at 50 kHz like MaFaulDa
(tachometer; underhang bearing accelerometer axial, radial, tangential; overhang bearing
accelerometer axial, radial, tangential; microphone). Each segment has its own rotation speed
(12-61 Hz) and is imbalanced with probability 0.45, by one of MaFaulDa's masses (6-35 g); normal
segments keep a residual imbalance of 0-3 g. Imbalance adds a once-per-revolution component,
mostly radial and tangential, growing with mass x speed^2; every machine also has its own base
vibration (misalignment: twice per revolution, mostly axial), its own sensor gains and noise
floor, so no single channel separates the classes across machines and speeds (slow, lightly
imbalanced segments drown in noise). The tachometer gives one fixed-width pulse per revolution,
so its level tells the speed. Rows are stored by recording session (segment), then machine, then
sample. 3.2e7 rows at scale 1: a request (one segment) matches 1e5 rows (2 s), x scale.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..spec import BenchPipeline

MACHINES = 10
SEGMENTS = 32              # per machine: 320 requests
SEGMENT_ROWS = 100_000     # at scale 1
RATE = 50_000              # samples per second
TRAIN = 120
MASSES = (6, 10, 15, 20, 25, 30, 35)   # grams, as in MaFaulDa's imbalance folders
CHANNELS = ("tachometer", "underhang_axial", "underhang_radial", "underhang_tangential",
            "overhang_axial", "overhang_radial", "overhang_tangential", "microphone")

_TABLE = {"samples": 0, "segment": 1, "machine": 2, "machine_b": 3}


def _u(i: str, k: int, seed: int, table: str) -> str:
    """Uniform [0, 1) from a row number and a stream k < 8 (trips.py's scheme, hashed twice; every
    table and seed on its own range of row numbers)."""
    base = seed * 2**36 + _TABLE[table] * 2**32
    return f"((hash(hash(({i} + {base}) * 8 + {k})) >> 11) * (1.0 / 9007199254740992))"


def _noise(h: str, k: int) -> str:
    """Byte k of a 64-bit hash as uniform noise with mean 0 and standard deviation 1."""
    return f"((({h} >> {8 * k}) & 255)::DOUBLE - 127.5) * {1 / 73.9:.6f}"


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    length = max(int(SEGMENT_ROWS * scale), 20)
    n_seg = MACHINES * SEGMENTS
    masses = "[" + ", ".join(map(str, MASSES)) + "]"
    # per segment (numbered machine * SEGMENTS + segment): speed, class, mass, phase
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __bearing_segments AS
        WITH s AS (SELECT s AS seg, {_u('s', 0, seed, 'segment')} AS u0, {_u('s', 1, seed, 'segment')} AS u1,
                          {_u('s', 2, seed, 'segment')} AS u2, {_u('s', 3, seed, 'segment')} AS u3
                   FROM range({n_seg}) t(s))
        SELECT seg, (seg // {SEGMENTS})::INTEGER AS machine, (seg % {SEGMENTS})::INTEGER AS segment,
               12 + 49 * u0 AS f, (u1 < 0.45)::INTEGER AS imbalance,
               CASE WHEN u1 < 0.45 THEN {masses}[1 + floor(u2 * {len(MASSES)})::INTEGER] ELSE 3 * u2 END AS mass,
               2 * pi() * u3 AS phase
        FROM s""")
    # per machine: 8 sensor gains (0.8-1.25), base vibration 0.4-1.2, noise floor 0.15-0.4
    gains = ", ".join(f"0.8 + 0.45 * {_u('m', k, seed, 'machine')} AS g{k}" for k in range(8))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __bearing_machines AS
        SELECT m AS machine, {gains}, 0.4 + 0.8 * {_u('m', 0, seed, 'machine_b')} AS base,
               0.15 + 0.25 * {_u('m', 1, seed, 'machine_b')} AS sigma
        FROM range({MACHINES}) t(m)""")
    e = lambda k: _noise("h", k)   # noqa: E731
    # accelerometers: gain * (base share * B * (1x or 2x) + imbalance share * F * 1x + noise);
    # B = base * (f/36)^2, F = mass/20 * (f/36)^2
    accel = {
        "underhang_axial": "0.6 * bb * s2 + 0.15 * ff * s1",
        "underhang_radial": "0.35 * bb * (0.8 * c1 + 0.6 * s1) + 0.9 * ff * s1",
        "underhang_tangential": "0.35 * bb * (0.8 * s1 - 0.6 * c1) + 0.8 * ff * c1",
        "overhang_axial": "0.5 * bb * (0.6 * s2 + 0.8 * c2) + 0.2 * ff * c1",
        "overhang_radial": "0.3 * bb * (0.6 * c1 - 0.8 * s1) + 1.2 * ff * (0.8 * s1 + 0.6 * c1)",
        "overhang_tangential": "0.3 * bb * (0.6 * s1 + 0.8 * c1) + 1.0 * ff * (0.8 * c1 - 0.6 * s1)",
    }
    cols = [f"(5 * (((f * t + phase / (2 * pi())) % 1) < 0.0015 * f)::INTEGER + 0.02 * {e(0)})::FLOAT AS tachometer"]
    cols += [f"(g{k} * ({accel[c]} + sigma * {e(k)}))::FLOAT AS {c}" for k, c in enumerate(CHANNELS[1:7], start=1)]
    cols += [f"(g7 * (0.25 * sqrt(f / 36) * {e(7)} + 0.1 * ff * s1 + 0.1 * bb * s2))::FLOAT AS microphone"]
    sep = ",\n               "
    # one row per segment with its machine's latents, in recording order: session (segment), machine
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __bearing_params AS
        SELECT s.segment * {MACHINES} + s.machine AS k, s.*, m.* EXCLUDE (machine),
               m.base * pow(s.f / 36, 2) AS bb, s.mass / 20 * pow(s.f / 36, 2) AS ff
        FROM __bearing_segments s JOIN __bearing_machines m USING (machine)""")
    # the samples: unnest keeps the sorted segments' order, so no sort of the big table is needed
    con.execute(f"""CREATE OR REPLACE TABLE vibrations AS
        WITH e AS (SELECT p.*, unnest(range({length})) AS j FROM (SELECT * FROM __bearing_params ORDER BY k) p),
        x AS (SELECT *, j / {RATE}::DOUBLE AS t, hash(hash((k * {length} + j + {seed * 2**36}) * 8)) AS h FROM e),
        y AS (SELECT *, sin(2 * pi() * f * t + phase) AS s1, cos(2 * pi() * f * t + phase) AS c1 FROM x),
        z AS (SELECT *, 2 * s1 * c1 AS s2, c1 * c1 - s1 * s1 AS c2 FROM y)
        SELECT machine, segment,
               {sep.join(cols)}
        FROM z""")
    con.execute(f"""CREATE OR REPLACE TABLE bearing_imbalance_requests AS
        SELECT machine, segment, imbalance AS label FROM __bearing_segments
        ORDER BY hash(hash(seg + {seed * 2**36 + 5 * 2**32}))""")
    for t in ("__bearing_params", "__bearing_segments", "__bearing_machines"):
        con.execute(f"DROP TABLE {t}")


def load(con: duckdb.DuckDBPyConnection, path: Path, segment_rows: int = SEGMENT_ROWS) -> None:
    """Ingest MaFaulDa CSV recordings: 8 comma-separated numbers per line, no header, one line per
    sample (tachometer, underhang axial, radial, tangential, overhang axial, radial, tangential,
    microphone), e.g. ``normal/12.288.csv``, ``imbalance/6g/13.5168.csv``. ``path`` is one such file
    or a folder searched recursively for ``*.csv``; only files under a folder named ``normal``
    (label 0) or ``imbalance`` (label 1) are used (other fault classes are skipped). ``machine`` is
    the file's position in the sorted list of their paths (one recording = one machine run) and
    ``segment`` is the sample's line number in its file // ``segment_rows`` (a 250,000-line MaFaulDa
    file gives segments 0, 1 and a half-length 2). One request per (machine, segment), in a fixed
    hashed order so that training and served requests mix both classes."""
    path = Path(path)
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    labelled = []
    for f in files:
        parts = {p.lower() for p in f.parts[:-1]}
        if "imbalance" in parts or "normal" in parts:
            labelled.append((f, int("imbalance" in parts)))
    if not labelled:
        raise ValueError(f"{path}: no MaFaulDa CSV under a 'normal' or 'imbalance' folder")
    columns = "{" + ", ".join(f"'{c}': 'FLOAT'" for c in CHANNELS) + "}"
    chans = ", ".join(CHANNELS)
    con.execute("CREATE OR REPLACE TABLE vibrations (machine INTEGER, segment INTEGER, "
                + ", ".join(f"{c} FLOAT" for c in CHANNELS) + ")")
    con.execute("CREATE OR REPLACE TEMP TABLE __bearing_labels (machine INTEGER, label INTEGER)")
    for machine, (f, label) in enumerate(labelled):
        # a table keeps the file's line order (insertion order), so rowid is the line number
        con.execute(f"CREATE OR REPLACE TEMP TABLE __bearing_file AS SELECT * FROM read_csv(?, header = false, "
                    f"delim = ',', columns = {columns})", [str(f)])
        con.execute(f"INSERT INTO vibrations SELECT {machine}, (rowid // {int(segment_rows)})::INTEGER, {chans} "
                    f"FROM __bearing_file ORDER BY rowid")
        con.execute("INSERT INTO __bearing_labels VALUES (?, ?)", [machine, label])
    con.execute("DROP TABLE __bearing_file")
    con.execute("""CREATE OR REPLACE TABLE bearing_imbalance_requests AS
        SELECT s.machine, s.segment, l.label
        FROM (SELECT DISTINCT machine, segment FROM vibrations) s JOIN __bearing_labels l USING (machine)
        ORDER BY hash(hash(s.machine * 65536 + s.segment))""")
    con.execute("DROP TABLE __bearing_labels")


PIPELINE = BenchPipeline(
    name="bearing_imbalance", task="classification", table="vibrations", by=("machine", "segment"),
    order=("machine", "segment"), generate=generate, load=load, file_format="MaFaulDa CSV recordings",
    make_model=lambda: make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=3000,
                                                                     random_state=0)),
    rows_per_request="one segment: 1e5 rows at scale 1 (2 s at 50 kHz), x scale", train=TRAIN,
    description=__doc__.splitlines()[0])
