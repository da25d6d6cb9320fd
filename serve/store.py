"""Job records outside any replica: a small SQLite database plus one folder per job on disk.

``<state_dir>/jobs.sqlite`` holds the records; ``<state_dir>/jobs/<id>/`` holds a job's inputs
until it finishes and its result (``result.mp4``) afterwards. Every replica that opens the same
state dir sees the same jobs, and a replica that restarts finds them where it left them.

A running job belongs to one runner (``owner``) that refreshes ``heartbeat_at``; a job whose
heartbeat stops (its replica died) is re-queued by whichever replica sweeps first, until it has
been started ``max_attempts`` times; then it is marked failed with an error saying so.
No Ray import here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("queued", "running", "done", "failed")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    request       TEXT NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    heartbeat_at  REAL,
    owner         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    frames_done   INTEGER NOT NULL DEFAULT 0,
    frames_total  INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    error_status  INTEGER,
    result        TEXT,
    notes         TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
"""


@dataclass
class Job:
    id: str
    status: str
    request: dict
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    owner: str | None = None
    attempts: int = 0
    frames_done: int = 0
    frames_total: int = 0
    error: str | None = None
    error_status: int | None = None
    result: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return round(self.frames_done / self.frames_total, 4) if self.frames_total else 0.0

    def public(self) -> dict:
        """What ``GET /jobs/{id}`` shows: no owner ids, no paths."""
        out = {
            "id": self.id, "status": self.status, "progress": self.progress,
            "frames_done": self.frames_done, "frames_total": self.frames_total,
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "attempts": self.attempts, "error": self.error, "notes": self.notes,
        }
        if self.status == "done":
            out["result_url"] = f"/jobs/{self.id}/result"
            out.update({k: v for k, v in (self.result or {}).items() if k != "file"})
        return out


def new_job_id() -> str:
    return uuid.uuid4().hex


def valid_job_id(job_id) -> bool:
    return isinstance(job_id, str) and len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


class JobStore:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite"
        db = sqlite3.connect(self.db_path, timeout=10.0)
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            db.executescript(_SCHEMA)
        finally:
            db.close()

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _tx(self):
        """One short transaction on a fresh connection (safe from any thread or process)."""
        db = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _job(row) -> Job:
        d = dict(row)
        d["request"] = json.loads(d["request"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["notes"] = json.loads(d["notes"] or "[]")
        return Job(**d)

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):  # a job id is 32 hex digits; anything else never becomes a path
            raise ValueError(f"not a job id: {str(job_id)[:64]!r}")
        return self.jobs_dir / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.mp4"

    # -- records ----------------------------------------------------------------------------
    def create(self, job_id: str, request: dict) -> Job:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, status, request, created_at) VALUES (?, 'queued', ?, ?)",
                       (job_id, json.dumps(request), now))
        return Job(job_id, "queued", request, now)

    def get(self, job_id: str) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job for ``owner`` (atomically: two replicas never get the same one)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', owner = ?, started_at = ?, heartbeat_at = ?, "
                       "attempts = attempts + 1, frames_done = 0, frames_total = 0 WHERE id = ?",
                       (owner, now, now, row["id"]))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return self._job(row)

    def heartbeat(self, job_id: str, owner: str, frames_done: int | None = None,
                  frames_total: int | None = None) -> bool:
        """Refresh a running job (and its progress); False when it is no longer this owner's to run
        (deleted, or re-queued after being taken for dead)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat_at = ?, frames_done = COALESCE(?, frames_done), "
                "frames_total = COALESCE(?, frames_total) WHERE id = ? AND owner = ? AND status = 'running'",
                (time.time(), frames_done, frames_total, job_id, owner))
            return cur.rowcount == 1

    def finish(self, job_id: str, owner: str, result: dict, notes: list[str] | None = None) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT notes FROM jobs WHERE id = ? AND owner = ? AND status = 'running'",
                             (job_id, owner)).fetchone()
            if row is None:
                return False
            all_notes = json.loads(row["notes"] or "[]") + list(notes or [])
            db.execute(
                "UPDATE jobs SET status = 'done', finished_at = ?, result = ?, frames_done = frames_total, "
                "notes = ?, error = NULL, error_status = NULL WHERE id = ?",
                (time.time(), json.dumps(result), json.dumps(all_notes), job_id))
            return True

    def fail(self, job_id: str, owner: str | None, error: str, status: int = 500) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, error_status = ? "
                "WHERE id = ? AND status IN ('queued', 'running') AND (? IS NULL OR owner = ?)",
                (time.time(), error, status, job_id, owner, owner))
            return cur.rowcount == 1

    def release(self, job_id: str, owner: str, note: str | None = None, count_attempt: bool = True) -> bool:
        """Put a running job back in the queue (its runner is going away, or its model replica died)."""
        with self._tx() as db:
            row = db.execute("SELECT notes FROM jobs WHERE id = ? AND owner = ? AND status = 'running'",
                             (job_id, owner)).fetchone()
            if row is None:
                return False
            notes = json.loads(row["notes"] or "[]") + ([note] if note else [])
            db.execute("UPDATE jobs SET status = 'queued', owner = NULL, heartbeat_at = NULL, frames_done = 0, "
                       "notes = ?, attempts = attempts - ? WHERE id = ?",
                       (json.dumps(notes), 0 if count_attempt else 1, job_id))
            return True

    def recover_stale(self, stale_after_s: float, max_attempts: int) -> list[tuple[str, str]]:
        """Running jobs whose heartbeat stopped: re-queue them, or fail them once they have been
        started ``max_attempts`` times. Returns (id, new status) pairs."""
        cutoff = time.time() - stale_after_s
        changed = []
        with self._tx() as db:
            rows = db.execute("SELECT id, attempts, notes FROM jobs WHERE status = 'running' AND heartbeat_at < ?",
                              (cutoff,)).fetchall()
            for row in rows:
                notes = json.loads(row["notes"] or "[]")
                if row["attempts"] < max_attempts:
                    notes.append(f"attempt {row['attempts']} was interrupted (its server replica stopped); "
                                 "re-queued")
                    db.execute("UPDATE jobs SET status = 'queued', owner = NULL, heartbeat_at = NULL, "
                               "frames_done = 0, notes = ? WHERE id = ?", (json.dumps(notes), row["id"]))
                    changed.append((row["id"], "queued"))
                else:
                    error = (f"interrupted: the server replica running this job stopped during each of its "
                             f"{row['attempts']} attempts; giving up (submit it again)")
                    db.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, error_status = 503, "
                               "owner = NULL WHERE id = ?", (time.time(), error, row["id"]))
                    changed.append((row["id"], "failed"))
        return changed

    def delete(self, job_id: str) -> Job | None:
        """Remove the record and the job's folder; returns the record as it was (None: unknown)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return self._job(row)

    def expire(self, keep_s: float) -> list[str]:
        """Delete finished jobs older than ``keep_s`` seconds (records and files)."""
        cutoff = time.time() - keep_s
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                "SELECT id FROM jobs WHERE status IN ('done', 'failed') AND finished_at < ?", (cutoff,))]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        for job_id in ids:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return ids

    def orphan_dirs(self) -> list[Path]:
        """Job folders without a record (a delete that raced a runner, a crash mid-submit)."""
        with self._tx() as db:
            known = {r["id"] for r in db.execute("SELECT id FROM jobs")}
        return [p for p in self.jobs_dir.iterdir() if p.is_dir() and p.name not in known]
