"""student — Jo Wilder game-play logs (Kaggle); classify whether a student answers a question correctly.

The Kaggle competition is "Predict Student Performance from Game Play".

Features (sql/student_correct.sql): per session, AVG and STDDEV of elapsed_time, hover_duration
and room_coor_x (one aggregate query) and COUNT(DISTINCT) of fqid, room_fqid and text_fqid (a
second one; approxql computes COUNT DISTINCT exactly), plus the question number. Model: a small
random forest.

Data: ``game_events`` with the original 20 columns for 120 sessions, grouped by session and in
event order like the original train.csv. Each session has a latent skill (about normal) and
curiosity: skilled students finish faster (shorter elapsed times), hover more briefly, and get
further, so they meet more distinct objects, rooms and texts; curious ones explore more. Session
lengths are lognormal (struggling students click more); 15 % of sessions have one long idle gap
(heavy-tailed elapsed_time); hover durations are lognormal per event. Event types, names, levels
and level groups follow the original's mix. Labels: 18 questions per session, correct with
probability logistic(logit(the question's real share of correct answers) + 1.5 skill + 0.3 curiosity).
Requests are session by session, so training and served requests are different students. 1.2e7
rows at scale 1: a request (one session) matches ~1e5 rows on average (lognormal, 10-90 % range
~4e4 to ~1.8e5), x scale.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.ensemble import RandomForestClassifier

from ..spec import BenchPipeline

SESSIONS = 120
EVENTS = 100_000           # mean events per session at scale 1
# share of correct answers per question in the original train_labels.csv (q1..q18, rounded)
CORRECT = (0.73, 0.98, 0.93, 0.80, 0.55, 0.78, 0.74, 0.62, 0.74, 0.50, 0.64, 0.86, 0.27, 0.70, 0.48, 0.73, 0.69, 0.95)
ROOMS = ("tunic.historicalsociety.entry", "tunic.historicalsociety.stacks", "tunic.historicalsociety.basement",
         "tunic.historicalsociety.collection", "tunic.historicalsociety.closet", "tunic.historicalsociety.frontdesk",
         "tunic.kohlcenter.halloffame", "tunic.capitol_0.hall", "tunic.library.frontdesk", "tunic.library.microfiche",
         "tunic.drycleaner.frontdesk", "tunic.historicalsociety.cage", "tunic.capitol_1.hall",
         "tunic.humanecology.frontdesk", "tunic.historicalsociety.closet_dirty", "tunic.flaghouse.entry",
         "tunic.wildlife.center", "tunic.historicalsociety.collection_flag", "tunic.capitol_2.hall")
FQIDS = 128
TEXT_FQIDS = 126
# event_name: share of events in the original
EVENT_NAMES = (("navigate_click", 0.40), ("person_click", 0.15), ("cutscene_click", 0.12), ("object_click", 0.09),
               ("map_hover", 0.05), ("notification_click", 0.05), ("map_click", 0.04), ("observation_click", 0.03),
               ("object_hover", 0.04), ("notebook_click", 0.02), ("checkpoint", 0.01))
FQID_NAMES = tuple(f"fqid_{k}" for k in range(FQIDS))
# text_fqid names: the room the text belongs to, then the text's number
TEXT_NAMES = tuple(f"{ROOMS[k % len(ROOMS)]}.text_{k}" for k in range(TEXT_FQIDS))
TEXTS = ("Whatcha doing over there, Jo?", "Just talking to Teddy.", "I gotta run to my meeting!",
         "Can I come, Gramps?", "Sure thing, Jo. Grab your notebook and come upstairs!",
         "Hey, this is Youmans' handwriting. I wonder what it says.", "Now where did I put my notebook?",
         "Wells? Like, the guy who wrote the paper?")
COLUMNS = ("session_id", "index", "elapsed_time", "event_name", "name", "level", "page", "room_coor_x",
           "room_coor_y", "screen_coor_x", "screen_coor_y", "hover_duration", "text", "fqid", "room_fqid",
           "text_fqid", "fullscreen", "hq", "music", "level_group")
TYPES = ("BIGINT", "BIGINT", "BIGINT", "VARCHAR", "VARCHAR", "INTEGER", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE",
         "DOUBLE", "DOUBLE", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "INTEGER", "INTEGER", "INTEGER", "VARCHAR")

_TABLE = {"events": 0, "session": 1, "session_b": 2, "answer": 3}


def _u(i: str, k: int, seed: int, table: str) -> str:
    """Uniform [0, 1) from a row number and a stream k < 8 (trips.py's scheme, hashed twice; every
    table and seed on its own range of row numbers)."""
    base = seed * 2**36 + _TABLE[table] * 2**32
    return f"((hash(hash(({i} + {base}) * 8 + {k})) >> 11) * (1.0 / 9007199254740992))"


def _normal(*us: str) -> str:
    """About standard normal from 2 or 3 uniforms (a centred, scaled sum)."""
    scale = {2: 2.449, 3: 2.0}[len(us)]
    return f"(({' + '.join(us)} - {len(us) / 2}) * {scale})"


def _list(values) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    mean = EVENTS * scale
    us = lambda table, prefix: ", ".join(f"{_u('s', k, seed, table)} AS {prefix}{k}" for k in range(8))  # noqa: E731
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __student_sessions AS
        WITH r AS (SELECT s, {us('session', 'u')}, {us('session_b', 'b')} FROM range({SESSIONS}) t(s)),
        l AS (SELECT *, {_normal('u0', 'u1', 'u2')} AS skill, b0 AS curiosity, {_normal('u3', 'u4', 'u5')} AS n1,
                     {_normal('u6', 'u7')} AS n2, {_normal('b1', 'b2')} AS n3 FROM r)
        SELECT s, 20090100000000000 + s * 10000000000 + floor(b3 * 1e10)::BIGINT AS session_id, skill, curiosity,
               greatest(round({mean} * exp(0.45 * n1 - 0.15 * skill - 0.11)), 20)::BIGINT AS len,
               3.6e6 * exp(-0.35 * skill + 0.35 * n2) AS duration,
               CASE WHEN b4 < 0.15 THEN 6e4 * exp(6 * b5) ELSE 0 END AS gap, b6 AS gap_at,
               (40 + floor({FQIDS - 40} / (1 + exp(-(0.9 * skill + 2.4 * (curiosity - 0.5))))))::INTEGER AS k_fqid,
               (30 + floor({TEXT_FQIDS - 30} / (1 + exp(-(0.7 * skill + 2 * (curiosity - 0.5))))))::INTEGER AS k_text,
               (9 + floor({len(ROOMS) - 9} / (1 + exp(-(0.8 * skill + 1.5 * (curiosity - 0.5))))))::INTEGER AS k_room,
               ln(900) - 0.3 * skill + 0.3 * n3 AS hover_mu,
               (b7 < 0.15)::INTEGER AS fullscreen, (b7 * 7 % 1 < 0.12)::INTEGER AS hq,
               (b7 * 13 % 1 < 0.92)::INTEGER AS music
        FROM l""")
    con.execute("""CREATE OR REPLACE TEMP TABLE __student_sessions2 AS
        SELECT *, SUM(len) OVER (ORDER BY s) - len AS start FROM __student_sessions""")
    ladder, cum = [], 0.0
    for code, (_, share) in enumerate(EVENT_NAMES[:-1]):
        cum += share
        ladder.append(f"WHEN b0 < {cum * 256:.1f} THEN {code}")
    event = f"CASE {' '.join(ladder)} ELSE {len(EVENT_NAMES) - 1} END"
    code = {name: i for i, (name, _) in enumerate(EVENT_NAMES)}
    hover = f"ev IN ({code['map_hover']}, {code['object_hover']})"
    talk = f"ev IN ({code['person_click']}, {code['cutscene_click']}, {code['observation_click']})"
    u = lambda k: _u("rn", k, seed, "events")   # noqa: E731
    byte = lambda k: f"((h >> {8 * k}) & 255)::DOUBLE"   # noqa: E731
    word = lambda k: f"((h >> {16 * k}) & 65535)::DOUBLE / 65536"   # noqa: E731
    # integer codes first (strings are looked up once, at the end: cheaper than comparing them)
    con.execute(f"""CREATE OR REPLACE TABLE game_events AS
        WITH e AS (SELECT p.*, unnest(range(p.len)) AS idx FROM (SELECT * FROM __student_sessions2 ORDER BY s) p),
        r AS (SELECT *, start + idx AS rn FROM e),
        v AS (SELECT *, hash(hash(({_TABLE['events'] * 2**32 + seed * 2**36} + rn) * 8 + 7)) AS h,
                     {u(0)} AS u0, {u(1)} AS u1, {u(2)} AS u2, {u(3)} AS u3, {u(4)} AS u4 FROM r),
        w AS (SELECT *, (idx + u0) / len AS x, {byte(0)} AS b0, {byte(1)} AS b1, {byte(2)} AS b2,
                     ((h >> 56) & 255)::INTEGER AS b7, {word(1)} AS w1, {word(2)} AS w2 FROM v),
        y AS (SELECT *, ({event})::INTEGER AS ev, least(floor(23 * x), 22)::INTEGER AS level,
                     least(floor(k_room * (0.6 * x + 0.4 * b2 / 256)), k_room - 1)::INTEGER AS room FROM w),
        z AS (SELECT *, {hover} AS hover, {talk} AS talk,
                     -150 * room + 900 * (u3 - 0.5) AS rx, -40 * room + 500 * (u4 - 0.5) - 200 AS ry FROM y)
        SELECT session_id, idx AS "index",
               round(duration * x + gap * (x > gap_at)::INTEGER)::BIGINT AS elapsed_time,
               {_list(n for n, _ in EVENT_NAMES)}[ev + 1] AS event_name,
               CASE WHEN b1 < 230 THEN 'basic' WHEN b1 < 246 THEN 'undefined' WHEN b1 < 249 THEN 'close'
                    WHEN b1 < 251 THEN 'open' WHEN b1 < 254 THEN 'prev' ELSE 'next' END AS name,
               level,
               CASE WHEN ev = {code['notebook_click']} THEN (b7 % 7)::DOUBLE END AS page,
               CASE WHEN NOT hover THEN rx END AS room_coor_x,
               CASE WHEN NOT hover THEN ry END AS room_coor_y,
               CASE WHEN NOT hover THEN round(0.4 * rx + 450) END AS screen_coor_x,
               CASE WHEN NOT hover THEN round(0.4 * ry + 380) END AS screen_coor_y,
               CASE WHEN hover THEN round(exp(hover_mu + 0.9 * {_normal('u1', 'u2')})) END AS hover_duration,
               CASE WHEN talk THEN {_list(TEXTS)}[1 + b7 % {len(TEXTS)}] END AS text,
               CASE WHEN ev NOT IN ({code['map_click']}, {code['map_hover']}) THEN
                    {_list(FQID_NAMES)}[1 + least(floor(k_fqid * pow(w1, 1.4)), k_fqid - 1)::INTEGER]
                    END AS fqid,
               {_list(ROOMS)}[room + 1] AS room_fqid,
               CASE WHEN talk THEN {_list(TEXT_NAMES)}[1 + least(floor(k_text * pow(w2, 1.4)), k_text - 1)::INTEGER]
                    END AS text_fqid,
               fullscreen, hq, music,
               CASE WHEN level <= 4 THEN '0-4' WHEN level <= 12 THEN '5-12' ELSE '13-22' END AS level_group
        FROM z""")
    base = "[" + ", ".join(f"{c!r}" for c in CORRECT) + "]"
    con.execute(f"""CREATE OR REPLACE TABLE student_correct_requests AS
        WITH a AS (SELECT s.s, s.session_id, q.q AS question, s.skill, s.curiosity,
                          {_u('s.s * 18 + q.q - 1', 0, seed, 'answer')} AS u
                   FROM __student_sessions s CROSS JOIN range(1, 19) q(q))
        SELECT session_id, question::INTEGER AS question,
               (u < 1 / (1 + exp(-(ln({base}[question] / (1 - {base}[question])) + 1.5 * skill
                                  + 0.3 * (curiosity - 0.5)))))::INTEGER AS label
        FROM a ORDER BY s, question""")
    con.execute("DROP TABLE __student_sessions2")
    con.execute("DROP TABLE __student_sessions")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest the Kaggle "Predict Student Performance from Game Play" files: ``train.csv`` (header
    ``session_id,index,elapsed_time,event_name,name,level,page,room_coor_x,room_coor_y,screen_coor_x,
    screen_coor_y,hover_duration,text,fqid,room_fqid,text_fqid,fullscreen,hq,music,level_group``,
    empty fields for missing values, text quoted when it holds commas) into ``game_events``, and
    ``train_labels.csv`` (header ``session_id,correct``, ids like ``20090312431273200_q1``) into
    ``student_correct_requests`` (session_id, question, label), by session then question. ``path``
    is the folder holding both, or train.csv itself with train_labels.csv beside it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    events, labels = (path / "train.csv" if path.is_dir() else path), folder / "train_labels.csv"
    columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in zip(COLUMNS, TYPES)) + "}"
    con.execute(f"""CREATE OR REPLACE TABLE game_events AS
        SELECT * FROM read_csv(?, header = true, delim = ',', quote = '"', escape = '"', nullstr = '',
                               columns = {columns})""", [str(events)])
    con.execute("""CREATE OR REPLACE TABLE student_correct_requests AS
        SELECT split_part(session_id, '_', 1)::BIGINT AS session_id,
               ltrim(split_part(session_id, '_', 2), 'q')::INTEGER AS question, correct::INTEGER AS label
        FROM read_csv(?, header = true, delim = ',', columns = {'session_id': 'VARCHAR', 'correct': 'INTEGER'})
        ORDER BY 1, 2""", [str(labels)])


PIPELINE = BenchPipeline(
    name="student_correct", task="classification", table="game_events", by=("session_id",),
    order=("session_id", "index"), generate=generate, load=load,
    file_format="Kaggle Predict Student Performance train.csv + train_labels.csv",
    make_model=lambda: RandomForestClassifier(n_estimators=60, max_depth=6, min_samples_leaf=5, random_state=0),
    rows_per_request="one session's events: ~1e5 on average at scale 1 (lognormal, 10-90 % ~4e4 to ~1.8e5), "
                     "x scale",
    description=__doc__.splitlines()[0])
