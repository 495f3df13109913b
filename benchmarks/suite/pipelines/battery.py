"""battery — Li-ion charge-cycle readings; regress the time left in the current charge.

Features (sql/battery_rul.sql): AVG and STDDEV of the five logged measurements (voltage, current and
temperature at the cell, current and voltage at the charger) over the cycle so far (WHERE battery =
$battery AND cycle = $cycle AND t < $t), plus the elapsed time itself (Biathlon's pipeline has it
too). Model: gradient-boosted trees.

Data: NASA-PCoE-style 18650 cells (B0005, B0006, B0007, B0018 at 24 C, B0029 at 43 C, B0046 at 4 C),
charged CC-CV as in the NASA tests: 1.5 A until the cell reaches 4.2 V, then 4.2 V until the current
falls to 20 mA. Each cell has its own capacity, fade rate and internal resistance; along its 168
cycles capacity fades (with cycle-to-cycle jitter and occasional regeneration after a rest) and
resistance grows, so the CC phase shortens. In CC the voltage rises steeply, then flattens, then
climbs to 4.2 V; in CV the current decays exponentially with a time constant set by the charge
left; the cell warms with I^2 R and cools in CV; the charger's voltage adds a lead drop. Noise per
reading is near-Gaussian (logistic). Every 12th cycle is logged at ~21 Hz (so a request matches
~1e5 readings at scale 1; the NASA files hold a reading every few seconds): 6 x 14 cycles, 1.2e7
rows, in (battery, cycle, t) order. A cycle ends at its CC-CV end time plus a Gaussian termination jitter (sd 60 s):
the label is that end minus t, the request time, drawn uniformly in the second half of the cycle as
in Biathlon. The first 1,500 requests (training) come from the even-numbered logged cycles of
every cell, the rest from the odd ones, so served cycles are never seen in training.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.ensemble import GradientBoostingRegressor

from ..spec import BenchPipeline

# battery, ambient temperature (C), initial capacity (Ah), capacity fade over the logged life,
# internal resistance (ohm) when new
BATTERIES = (
    ("B0005", 24, 1.86, 0.30, 0.070),
    ("B0006", 24, 2.04, 0.42, 0.076),
    ("B0007", 24, 1.89, 0.25, 0.068),
    ("B0018", 24, 1.86, 0.28, 0.072),
    ("B0029", 43, 1.84, 0.36, 0.060),
    ("B0046", 4, 1.62, 0.22, 0.110),
)
LIFE = 168                   # cycles
STEP = 12                    # every STEP-th cycle is logged: cycles 1, 13, ..., 157
LOGGED = LIFE // STEP        # 14 logged cycles per battery
HZ = 21.0                    # readings per second at scale 1
I_CC, V_CV, I_END = 1.5, 4.2, 0.02
BLOCK = 512                  # a cycle holds a whole number of blocks (see generate)
REQUESTS = 3000
TRAIN = 1500

# uniform [0, 1) from a row number and a stream k < 32 (hash(i * 32 + k): DuckDB's two-argument hash
# is correlated across its second argument)
U = "((hash(({i}) * 32 + {k} + {seed}) >> 11) * (1.0 / 9007199254740992))"


def _u(i: str, k: int, seed: int) -> str:
    return U.format(i=i, k=k, seed=seed * 1_000_003)


def _normal(a: str, b: str, trig: str = "cos") -> str:
    """A standard normal from two uniforms (Box-Muller; cos and sin give two independent ones)."""
    return f"(sqrt(-2 * ln(1 - {a})) * {trig}(2 * pi() * {b}))"


def _logistic(u: str) -> str:
    """A logistic variate scaled to sd 1 from a uniform: for the many readings, a close and cheap
    stand-in for a normal (one log; tails a little heavier)."""
    return f"(0.5513 * ln(({u} + 1e-12) / (1 + 1e-12 - {u})))"


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    cells = ", ".join(f"({k}, '{b[0]}', {b[1]!r}, {b[2]!r}, {b[3]!r}, {b[4]!r})" for k, b in enumerate(BATTERIES))
    # one row per logged cycle: capacity, resistance, the CC and CV durations, the end time
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __battery_cycles AS
        WITH b AS (SELECT * FROM (VALUES {cells}) v(bid, battery, ambient, q0, fade, r0)),
        c AS (SELECT b.*, k, 1 + {STEP} * k AS cycle, (1 + {STEP} * k) / {LIFE}.0 AS age, bid * 64 + k AS i
              FROM b, range({LOGGED}) t(k)),
        u AS (SELECT *, {_u('i', 0, seed)} AS u0, {_u('i', 1, seed)} AS u1, {_u('i', 2, seed)} AS u2,
                        {_u('i', 3, seed)} AS u3, {_u('i', 4, seed)} AS u4, {_u('i', 5, seed)} AS u5 FROM c),
        q AS (SELECT *,
                     -- capacity: power-law fade, 1.5 % jitter, a 3 % regeneration after one rest in six
                     q0 * (1 - fade * pow(age, 1.1)) * (1 + 0.015 * {_normal('u0', 'u1')})
                        + 0.03 * q0 * (u4 < 1 / 6)::INTEGER AS cap,
                     -- resistance grows with age and with cold (and shrinks with heat)
                     r0 * (1 + 0.6 * age) * (1 + 0.03 * {_normal('u0', 'u1', 'sin')}) * (1 + 0.012 * (24 - ambient)) AS r,
                     0.02 + 0.06 * u5 AS soc0,
                     {_normal('u2', 'u3')} AS jitter
              FROM u),
        d AS (SELECT *, cap * (1 - soc0) * least(greatest(0.80 - 2.0 * (r - 0.07), 0.55), 0.90) AS q_cc FROM q),
        e AS (SELECT *, 3600 * q_cc / {I_CC} AS t_cc, 3600 * (cap * (1 - soc0) - q_cc) / {I_CC} AS tau FROM d),
        f AS (SELECT *, t_cc + tau * ln({I_CC / I_END}) + 60 * jitter AS t_end FROM e),
        g AS (SELECT *, greatest(ceil(t_end * {HZ * scale!r} / {BLOCK}), 1)::BIGINT * {BLOCK} AS n FROM f)
        SELECT *, coalesce(sum(n) OVER (ORDER BY bid, k ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS off
        FROM g""")
    # a cycle's readings are whole blocks of row numbers, so each reading finds its cycle by an
    # equality join, which keeps range()'s order: the table comes out in (battery, cycle, t) order
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __battery_blocks AS
        SELECT c.*, c.off // {BLOCK} + r.b AS block FROM __battery_cycles c, range(c.n // {BLOCK}) r(b)""")
    total = con.execute("SELECT sum(n) FROM __battery_cycles").fetchall()[0][0]
    heat = "19 * r * (1 - exp(-least(t, t_cc) / 600)) * exp(-greatest(t - t_cc, 0) / 900)"
    shape = "(0.45 * (1 - exp(-6 * t / t_cc)) / (1 - exp(-6)) + 0.55 * pow(t / t_cc, 4))"
    con.execute(f"""CREATE OR REPLACE TABLE charge_readings AS
        WITH g AS (SELECT i, {', '.join(f"{_logistic(_u('i', 8 + k, seed))} AS z{k}" for k in range(5))}
                   FROM range({total}) r(i)),
        t AS (SELECT g.*, c.battery, c.cycle, c.ambient, c.r, c.soc0, c.t_cc, c.tau,
                     c.t_end * (g.i - c.off) / (c.n - 1) AS t
              FROM g JOIN __battery_blocks c ON c.block = g.i // {BLOCK}),
        m AS (SELECT *,
                     CASE WHEN t < t_cc THEN {I_CC} ELSE {I_CC} * exp(-(t - t_cc) / tau) END AS cur,
                     CASE WHEN t < t_cc THEN (3.45 + {I_CC} * r + 0.1 * soc0)
                                              + ({V_CV} - 3.45 - {I_CC} * r - 0.1 * soc0) * {shape}
                          ELSE {V_CV} END AS volt
              FROM t)
        SELECT battery, cycle::INTEGER AS cycle, t,
               (volt + 0.002 * z0)::FLOAT AS voltage,
               (cur + 0.003 * z1)::FLOAT AS current,
               (ambient + {heat} + 0.03 * z2)::FLOAT AS temperature,
               (cur * 1.002 + 0.003 * z3)::FLOAT AS charge_current,
               (volt + 0.25 * cur + 0.003 * z4)::FLOAT AS charge_voltage
        FROM m""")
    # requests: the first TRAIN on even logged cycles, the rest on odd ones; t in the cycle's second half
    con.execute(f"""CREATE OR REPLACE TABLE battery_rul_requests AS
        WITH r AS (SELECT i, {_u('i', 16, seed)} AS u0, {_u('i', 17, seed)} AS u1, {_u('i', 18, seed)} AS u2
                   FROM range({REQUESTS}) t(i)),
        z AS (SELECT i, floor(u0 * {len(BATTERIES)})::INTEGER AS bid,
                     2 * floor(u1 * {LOGGED // 2})::INTEGER + (i >= {TRAIN})::INTEGER AS k, u2 FROM r)
        SELECT c.battery, c.cycle::INTEGER AS cycle, c.t_end * (0.5 + 0.5 * z.u2) AS t,
               c.t_end * (0.5 - 0.5 * z.u2) AS label
        FROM z JOIN __battery_cycles c ON c.bid = z.bid AND c.k = z.k
        ORDER BY z.i""")
    con.execute("DROP TABLE __battery_blocks")
    con.execute("DROP TABLE __battery_cycles")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest the NASA battery data as commonly redistributed in CSV (the Kaggle "NASA Battery
    Dataset" ``cleaned_dataset``): ``path`` is the folder holding ``metadata.csv`` (type, start_time,
    ambient_temperature, battery_id, test_id, uid, filename, Capacity, Re, Rct; one row per test)
    and ``data/`` with one CSV per test. NASA's own release is MATLAB .mat files, which this loader
    does not read. Charge tests' files have the columns Voltage_measured, Current_measured,
    Temperature_measured, Current_charge, Voltage_charge, Time (the discharge export's
    Current_load, Voltage_load are taken in their place). A battery's charge tests, in test_id
    order, are its cycles 1, 2, ... Requests: three per cycle at uniform times in its second half
    (label: the cycle's last Time minus t), even cycles first (training), then odd ones."""
    path = Path(path)
    con.execute("""CREATE OR REPLACE TEMP TABLE __battery_meta AS
        SELECT battery_id AS battery, filename,
               row_number() OVER (PARTITION BY battery_id ORDER BY test_id::INTEGER)::INTEGER AS cycle
        FROM read_csv(?, header = true, all_varchar = true) WHERE type = 'charge'""", [str(path / "metadata.csv")])
    files = [str(path / "data" / f) for (f,) in con.execute("SELECT filename FROM __battery_meta").fetchall()]
    con.execute("CREATE OR REPLACE TEMP TABLE __battery_raw AS SELECT * FROM read_csv(?, header = true, "
                "union_by_name = true, filename = true)", [files])
    have = {r[0] for r in con.execute("DESCRIBE __battery_raw").fetchall()}
    i_chg = "Current_charge" if "Current_charge" in have else "Current_load"
    v_chg = "Voltage_charge" if "Voltage_charge" in have else "Voltage_load"
    con.execute(f"""CREATE OR REPLACE TABLE charge_readings AS
        SELECT m.battery, m.cycle, r.Time::DOUBLE AS t, r.Voltage_measured::FLOAT AS voltage,
               r.Current_measured::FLOAT AS current, r.Temperature_measured::FLOAT AS temperature,
               r.{i_chg}::FLOAT AS charge_current, r.{v_chg}::FLOAT AS charge_voltage
        FROM __battery_raw r JOIN __battery_meta m ON m.filename = parse_filename(r.filename)
        WHERE r.Time IS NOT NULL ORDER BY m.battery, m.cycle, t""")
    con.execute("""CREATE OR REPLACE TABLE battery_rul_requests AS
        WITH c AS (SELECT battery, cycle, max(t) AS t_end FROM charge_readings GROUP BY ALL HAVING max(t) > 0),
        r AS (SELECT c.*, (hash((hash(battery) >> 11) + cycle * 8 + j) >> 11) * (1.0 / 9007199254740992) AS u
              FROM c, range(3) x(j))
        SELECT battery, cycle, t_end * (0.5 + 0.5 * u) AS t, t_end * (0.5 - 0.5 * u) AS label
        FROM r ORDER BY cycle % 2, hash(battery, cycle, u)""")
    con.execute("DROP TABLE __battery_raw")
    con.execute("DROP TABLE __battery_meta")


PIPELINE = BenchPipeline(
    name="battery_rul", task="regression", table="charge_readings", by=("battery", "cycle"),
    order=("battery", "cycle", "t"), stratify="t", generate=generate, load=load,
    file_format="NASA PCoE battery data, the CSV export (metadata.csv + data/NNNNN.csv per test)",
    make_model=lambda: GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.1, random_state=0),
    rows_per_request="readings of one charge cycle before t: ~1e5 at scale 1 (~5e4 to ~1.7e5), x scale",
    description=__doc__.splitlines()[0], train=TRAIN)
