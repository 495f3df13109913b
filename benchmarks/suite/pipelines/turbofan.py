"""turbofan — turbofan engine sensor streams; regress an engine's remaining useful life (cycles).

Features (sql/turbofan_rul.sql): AVG of nine sensors over one flight cycle of one engine (WHERE
engine = $engine AND cycle = $cycle): T24, T30, T50 (LPC, HPC, LPT outlet temperatures), P30 (HPC
outlet pressure), Ps30 (HPC static pressure), phi (fuel flow ratio), BPR (bypass ratio), W31, W32
(HPT, LPT coolant bleeds) -- the nine informative C-MAPSS sensors with the largest trends.
Model: a small random forest.

Data: C-MAPSS-style run-to-failure engines recorded at high frequency within each flight, as in
N-CMAPSS (which Biathlon used). Each engine has its own life (128 to 362 cycles, right-skewed like
FD001's, mean ~200), initial wear and sensor offsets; wear grows exponentially to failure and
moves each sensor by its FD001 trend (T50 +30 K, P30 -2.6 psi, ...). Within a flight, readings at
8.5 Hz follow the flight profile (takeoff/climb at full load, cruise, descent at idle; flights of
1 to 5 hours, mostly short) with near-Gaussian (logistic) noise correlated within the temperature,
pressure and flow groups; each flight adds its own ambient and
operating offset (FD001's per-cycle noise), which is what keeps RUL from being read off exactly.
Logged flights: 5 per engine, stratified over its life (one flight in each fifth), so labels
(RUL = life - cycle) span 0 to ~360. Rows per flight are proportional to its duration: ~8e4 on
average, 1.9e7 rows at scale 1, in (engine, cycle, t) order. A request is one logged flight;
requests are every logged flight, those of the first 30 engines first (the 150 training
requests), then the 20 other engines' 100 flights: served engines are never seen in training.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.ensemble import RandomForestRegressor

from ..spec import BenchPipeline

ENGINES = 50
TRAIN_ENGINES = 30
LOGGED = 5                   # logged flights per engine
TRAIN = TRAIN_ENGINES * LOGGED
HZ = 8.5                     # readings per second at scale 1
BLOCK = 256                  # a flight holds a whole number of blocks (see generate)
# column, C-MAPSS sensor number, FD001 level, load sensitivity, wear trend at failure, noise sd,
# noise group (0 temperatures, 1 pressures, 2 flows)
SENSORS = (
    ("t24", 2, 642.7, 14.0, 1.3, 0.5, 0),
    ("t30", 3, 1590.5, 60.0, 13.0, 6.0, 0),
    ("t50", 4, 1408.9, 85.0, 30.0, 9.0, 0),
    ("p30", 7, 553.4, 45.0, -2.6, 0.9, 1),
    ("ps30", 11, 47.54, 3.8, 0.95, 0.27, 1),
    ("phi", 12, 521.4, 38.0, -2.4, 0.74, 1),
    ("bpr", 15, 8.44, -0.35, 0.12, 0.038, 2),
    ("w31", 20, 38.82, 2.6, -0.65, 0.18, 2),
    ("w32", 21, 23.29, 1.6, -0.38, 0.11, 2),
)

# uniform [0, 1) from a row number and a stream k < 32 (hash(i * 32 + k): DuckDB's two-argument hash
# is correlated across its second argument)
U = "((hash(({i}) * 32 + {k} + {seed}) >> 11) * (1.0 / 9007199254740992))"


def _u(i: str, k: int, seed: int) -> str:
    return U.format(i=i, k=k, seed=seed * 1_000_003)


def _normal(a: str, b: str, trig: str = "cos") -> str:
    """A standard normal from two uniforms (Box-Muller; cos and sin give two independent ones)."""
    return f"(sqrt(-2 * ln(1 - {a})) * {trig}(2 * pi() * {b}))"


def _normals(i: str, first_stream: int, n: int, seed: int) -> str:
    """Select-list items z0 .. z{n-1}: independent standard normals for row ``i`` (Box-Muller)."""
    out = []
    for k in range(n):
        a, b = _u(i, first_stream + 2 * (k // 2), seed), _u(i, first_stream + 2 * (k // 2) + 1, seed)
        out.append(f"{_normal(a, b, 'cos' if k % 2 == 0 else 'sin')} AS z{k}")
    return ", ".join(out)


def _logistic(u: str) -> str:
    """A logistic variate scaled to sd 1 from a uniform: for the many readings, a close and cheap
    stand-in for a normal (one log; tails a little heavier)."""
    return f"(0.5513 * ln(({u} + 1e-12) / (1 + 1e-12 - {u})))"


def _fifth(life: str, k: str, u: str) -> str:
    """The k-th of LOGGED cycles spread over a life: uniform in (floor(life k / LOGGED),
    floor(life (k + 1) / LOGGED)], so an engine's picks are distinct and one falls in each part."""
    lo, hi = f"floor({life} * {k} / {LOGGED})", f"floor({life} * ({k} + 1) / {LOGGED})"
    return f"{lo} + 1 + floor({u} * ({hi} - {lo}))"


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    # engines: life, wear curvature, initial wear, and an offset per sensor
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __tf_engines AS
        WITH e AS (SELECT engine, {_u('engine', 0, seed)} AS u0, {_u('engine', 1, seed)} AS u1,
                          {_u('engine', 2, seed)} AS u2, {_u('engine', 3, seed)} AS u3
                   FROM range(1, {ENGINES + 1}) t(engine))
        SELECT engine, least(128 + round(exp(4.1 + 0.6 * {_normal('u0', 'u1')})), 362)::INTEGER AS life,
               3.0 + 2.0 * u2 AS beta, 0.1 * u3 AS w0, {_normals('engine', 4, len(SENSORS), seed)}
        FROM e""")
    # logged flights, one in each fifth of the life: cycle, duration, wear, and per sensor the
    # flight's level (FD001 level + wear trend + engine and flight offsets + ambient, for temperatures)
    # (row ids engine * 8 + k with streams 14-25, apart from the engines' 0-13 and the readings' 26-29)
    level = ", ".join(
        f"{s[2] - 0.7 * s[3]!r} + {s[4]!r} * wear + {s[5]!r} * (0.5 * ez{k} + 0.8 * z{k})"
        + (f" + {s[3] / 20!r} * ambient" if s[6] == 0 else "") + f" AS c_{s[0]}"
        for k, s in enumerate(SENSORS))
    engine_z = ", ".join(f"e.z{k} AS ez{k}" for k in range(len(SENSORS)))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __tf_flights AS
        WITH f AS (SELECT engine, k, engine * 8 + k AS i FROM __tf_engines, range({LOGGED}) t(k)),
        g AS (SELECT f.*, {_u('i', 14, seed)} AS u0, {_u('i', 15, seed)} AS u1,
                     {_normals('i', 16, len(SENSORS) + 1, seed)} FROM f),
        c AS (SELECT g.*, e.life, e.beta, e.w0, {engine_z},
                     ({_fifth('e.life', 'g.k', 'g.u0')})::INTEGER AS cycle,
                     1 + 4 * pow(g.u1, 1.6) AS hours, 0.6 * g.z{len(SENSORS)} AS ambient
              FROM g JOIN __tf_engines e USING (engine)),
        w AS (SELECT *, w0 + (1 - w0) * (exp(beta * cycle / life) - 1) / (exp(beta) - 1) AS wear,
                     greatest(ceil(hours * 3600 * {HZ * scale!r} / {BLOCK}), 1)::BIGINT * {BLOCK} AS n
              FROM c)
        SELECT engine, k, i, life, cycle, hours, wear, n, {level},
               coalesce(sum(n) OVER (ORDER BY engine, k ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS off
        FROM w""")
    # a flight's readings are whole blocks of row numbers, so each reading finds its flight by an
    # equality join, which keeps range()'s order: the table comes out in (engine, cycle, t) order
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __tf_blocks AS
        SELECT f.*, f.off // {BLOCK} + r.b AS block FROM __tf_flights f, range(f.n // {BLOCK}) r(b)""")
    total = con.execute("SELECT sum(n) FROM __tf_flights").fetchall()[0][0]
    # flight phase x in [0, 1): takeoff and climb at full load, cruise (with step climbs), descent at
    # idle; a reading is its flight's level, plus the load's effect, plus noise correlated within a
    # sensor group (temperatures, pressures, flows)
    load = ("CASE WHEN x < 0.1 THEN 1.0 - 0.5 * x WHEN x < 0.85 THEN 0.72 + 0.03 * sin(6.283 * 3 * x) "
            "ELSE 0.35 END")
    cols = ", ".join(f"(c_{s[0]} + {s[3]!r} * load + {s[5]!r} * n{s[6]})::FLOAT AS {s[0]}" for s in SENSORS)
    zs = ", ".join(f"{_logistic(_u('i', 26 + k, seed))} AS z{k}" for k in range(4))
    con.execute(f"""CREATE OR REPLACE TABLE turbofan AS
        WITH g AS (SELECT i, {zs} FROM range({total}) r(i)),
        r AS (SELECT f.engine, f.cycle, f.hours, {', '.join(f"f.c_{s[0]}" for s in SENSORS)},
                     (g.i - f.off + 0.5) / f.n AS x,
                     0.8 * g.z0 + 0.6 * g.z3 AS n0, 0.8 * g.z1 + 0.6 * g.z3 AS n1, 0.8 * g.z2 + 0.6 * g.z3 AS n2
              FROM g JOIN __tf_blocks f ON f.block = g.i // {BLOCK}),
        p AS (SELECT *, {load} AS load FROM r)
        SELECT engine::INTEGER AS engine, cycle, (x * hours * 3600)::FLOAT AS t, {cols}
        FROM p""")
    con.execute(f"""CREATE OR REPLACE TABLE turbofan_rul_requests AS
        SELECT engine::INTEGER AS engine, cycle, (life - cycle)::DOUBLE AS label
        FROM __tf_flights ORDER BY engine > {TRAIN_ENGINES}, hash(i + {seed})""")
    for t in ("__tf_blocks", "__tf_flights", "__tf_engines"):
        con.execute(f"DROP TABLE {t}")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest NASA C-MAPSS ``train_FD001.txt`` (or FD002-FD004): space-separated, no header, 26
    columns: unit, cycle, three operational settings, sensors 1-21. There is one reading per
    cycle, so a cycle's "stream" is that one row (a request matches one row): unit -> engine,
    cycle -> cycle, t = 0, the nine sensors by their C-MAPSS numbers (the settings and the other
    twelve sensors are not kept). Requests: as for generated data, 5 cycles per unit, one
    in each fifth of its life, labelled with the usual RUL = the unit's last cycle - cycle; the
    cycles of 30 units (hash order) first, for training, then the other units'."""
    cols = ["engine", "cycle", "setting1", "setting2", "setting3"] + [f"s{k}" for k in range(1, 22)]
    split = "regexp_split_to_array(trim(line), '\\s+')"
    values = ", ".join(f"{split}[{k + 1}] AS {c}" for k, c in enumerate(cols))
    sensors = ", ".join(f"s{s[1]}::FLOAT AS {s[0]}" for s in SENSORS)
    con.execute(f"""CREATE OR REPLACE TABLE turbofan AS
        WITH raw AS (SELECT {values} FROM read_csv(?, header = false, delim = '\\t', quote = '', escape = '',
                                                   columns = {{'line': 'VARCHAR'}}) WHERE trim(line) <> '')
        SELECT engine::INTEGER AS engine, cycle::INTEGER AS cycle, 0::FLOAT AS t, {sensors}
        FROM raw ORDER BY engine, cycle""", [str(path)])
    con.execute(f"""CREATE OR REPLACE TABLE turbofan_rul_requests AS
        WITH units AS (SELECT engine, max(cycle) AS life, row_number() OVER (ORDER BY hash(engine)) AS rank
                       FROM turbofan GROUP BY engine),
        picks AS (SELECT DISTINCT engine, life, rank,
                         ({_fifth('life', 'k', '((hash(engine * 8 + k) >> 11) * (1.0 / 9007199254740992))')})::INTEGER
                             AS cycle
                  FROM units, range({LOGGED}) t(k))
        SELECT p.engine, p.cycle, (p.life - p.cycle)::DOUBLE AS label
        FROM picks p SEMI JOIN turbofan t USING (engine, cycle)
        ORDER BY p.rank > {TRAIN_ENGINES}, hash(p.engine, p.cycle)""")


PIPELINE = BenchPipeline(
    name="turbofan_rul", task="regression", table="turbofan", by=("engine", "cycle"),
    order=("engine", "cycle", "t"), generate=generate, load=load,
    file_format="NASA C-MAPSS train_FD00x.txt (space-separated, no header, 26 columns)",
    make_model=lambda: RandomForestRegressor(n_estimators=50, max_depth=8, min_samples_leaf=2, random_state=0),
    rows_per_request="readings of one flight: ~8e4 at scale 1 (~3e4 to ~1.5e5 by flight length), x scale",
    description=__doc__.splitlines()[0], train=TRAIN)
