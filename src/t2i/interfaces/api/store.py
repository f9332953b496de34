"""The job queue on disk: one SQLite table, every change one transaction.

States: queued -> running -> done | failed | cancelled (a queued job can go straight to
cancelled). A worker claims the oldest queued job in one `BEGIN IMMEDIATE` transaction, so two
workers never take the same job; a job's answer is written with its final state in one
transaction, and only while the job is still `running` by that claim. After a crash (kill -9)
the jobs found `running` never finished: `recover()` puts them back in the queue, so a restart
runs every waiting job, keeps every finished answer, and runs no job twice to completion.

WAL journal, synchronous=NORMAL: a committed transaction survives the process being killed
(the OS still has it); only a power loss may drop the last commits.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 3  # a job that was running when the server died this many times is given up

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    status INTEGER,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS options (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Job:
    id: str
    kind: str
    payload: dict
    state: str
    created: float
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    worker: str | None = None
    status: int | None = None  # the HTTP status of the answer, once final
    seq: int = 0


class Full(Exception):
    def __init__(self, queued: int):
        self.queued = queued


class Store:
    """Thread-safe: one connection, one lock; every method is one short transaction."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return value

    # ------------------------------------------------------------------------- the queue

    def recover(self) -> tuple[int, int]:
        """After a start: jobs left `running` go back to the queue (or fail after MAX_ATTEMPTS).
        Returns (requeued, given up)."""
        def tx(db):
            given_up = db.execute(
                "UPDATE jobs SET state='failed', status=500, finished=?, answer=? WHERE state='running' AND attempts>=?",
                (time.time(), json.dumps({"error": "Crashed", "detail": f"the server stopped while running this job "
                                          f"{MAX_ATTEMPTS} times; it was given up"}), MAX_ATTEMPTS)).rowcount
            requeued = db.execute("UPDATE jobs SET state='queued', worker=NULL WHERE state='running'").rowcount
            return requeued, given_up
        return self._tx(tx)

    def submit(self, job_id: str, kind: str, payload: dict, max_queued: int) -> int:
        """Queue a job; its position (jobs queued before it). Full when max_queued are waiting;
        sqlite3.IntegrityError when the id exists."""
        text = json.dumps(payload)

        def tx(db):
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
            if queued >= max_queued:
                raise Full(queued)
            db.execute("INSERT INTO jobs (id, kind, payload, state, created) VALUES (?, ?, ?, 'queued', ?)",
                       (job_id, kind, text, time.time()))
            return queued
        return self._tx(tx)

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running by `worker`; None when nothing waits."""
        def tx(db):
            row = db.execute("SELECT seq FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', started=?, worker=?, attempts=attempts+1 WHERE seq=?",
                       (time.time(), worker, row[0]))
            return self._job(db, "seq=?", row[0], payload=True)
        return self._tx(tx)

    def finish(self, job_id: str, worker: str, state: str, status: int, answer: str) -> bool:
        """Record a running job's end and answer; False when it was not running by `worker` any more
        (cancelled meanwhile): the answer is dropped."""
        def tx(db):
            return db.execute("UPDATE jobs SET state=?, status=?, answer=?, finished=? WHERE id=? AND state='running' "
                              "AND worker=?", (state, status, answer, time.time(), job_id, worker)).rowcount == 1
        return self._tx(tx)

    def requeue(self, job_id: str, worker: str) -> bool:
        """A running job back in the queue at its place (the server stops before it finished)."""
        def tx(db):
            return db.execute("UPDATE jobs SET state='queued', worker=NULL WHERE id=? AND state='running' AND worker=?",
                              (job_id, worker)).rowcount == 1
        return self._tx(tx)

    def cancel(self, job_id: str, answer: str) -> str | None:
        """Cancel a queued or running job; returns its state before (None: no such job). A final
        job is left as it is."""
        def tx(db):
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] in ACTIVE:
                db.execute("UPDATE jobs SET state='cancelled', status=409, answer=?, finished=? WHERE id=?",
                           (answer, time.time(), job_id))
            return row[0]
        return self._tx(tx)

    def prune(self, keep: int) -> int:
        """Forget the oldest final jobs beyond `keep`."""
        def tx(db):
            return db.execute("DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('done', 'failed', "
                              "'cancelled') ORDER BY seq DESC LIMIT -1 OFFSET ?)", (keep,)).rowcount
        return self._tx(tx)

    # ------------------------------------------------------------------------- reading

    @staticmethod
    def _job(db, where: str, value, payload: bool = False) -> Job | None:
        columns = "id, kind, state, created, started, finished, attempts, worker, status, seq" + (
            ", payload" if payload else "")
        row = db.execute(f"SELECT {columns} FROM jobs WHERE {where}", (value,)).fetchone()
        if row is None:
            return None
        return Job(row[0], row[1], json.loads(row[10]) if payload else {}, row[2], row[3], row[4], row[5], row[6],
                   row[7], row[8], row[9])

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._job(self._db, "id=?", job_id)

    def answer(self, job_id: str) -> tuple[str, int | None, str | None] | None:
        """(state, status, answer JSON) of a job; None when there is no such job."""
        with self._lock:
            row = self._db.execute("SELECT state, status, answer FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def position(self, job: Job) -> int | None:
        """Jobs queued before a queued job (0: it starts next); None when it is not queued."""
        if job.state != "queued":
            return None
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq<?", (job.seq,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in (*ACTIVE, *FINAL)} | dict(rows)

    def queued_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq")]

    # ------------------------------------------------------------------------- options

    def options(self) -> dict:
        with self._lock:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM options")}

    def set_options(self, values: dict) -> None:
        def tx(db):
            db.executemany("INSERT OR REPLACE INTO options (key, value) VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in values.items()])
        self._tx(tx)
