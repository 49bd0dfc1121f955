"""Bring a job store written by an older llmsup up to the current schema (``PRAGMA user_version``).

- no ``expires_at`` column (first versions): added and filled from each record;
- no ``finished_at`` column (before retention): added and filled from each record;
- no ``error_detail`` column: added (the detail stays in each record too; the column lets operators query it);
- no ``turn`` column (before fair shares between owners): added, 0 for every job;
- version 0 -> 1: idempotency keys become per-owner (``owner/key``, ``/key`` without an owner). Version 0
  stored the web layer's form: ``owner/key`` for API-key users, the bare key for everyone else, so a key
  such as ``alice/k1`` sent without an owner could find alice's job. Each record keeps the key as its
  client sent it; the indexed column gets the scoped form.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable

log = logging.getLogger("llmsup.store")
VERSION = 1


def migrate(db: sqlite3.Connection, scoped_key: Callable[[str | None, str], str]) -> None:
    cols = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if not cols:  # a new store: the schema is created as it is now
        db.execute(f"PRAGMA user_version={VERSION}")
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if "expires_at" not in cols:
            db.execute("ALTER TABLE jobs ADD COLUMN expires_at REAL NOT NULL DEFAULT 0")
            db.execute("UPDATE jobs SET expires_at = json_extract(data, '$.created_at')"
                       " + json_extract(data, '$.queue_timeout_s')")
        if "finished_at" not in cols:
            db.execute("ALTER TABLE jobs ADD COLUMN finished_at REAL")
            db.execute("UPDATE jobs SET finished_at = json_extract(data, '$.finished_at')"
                       " WHERE status NOT IN ('queued', 'running')")
        if "error_detail" not in cols:
            db.execute("ALTER TABLE jobs ADD COLUMN error_detail TEXT")
        if "turn" not in cols:  # fair shares: jobs queued before it keep their order, ahead of new ones
            db.execute("ALTER TABLE jobs ADD COLUMN turn REAL NOT NULL DEFAULT 0")
        if version < 1:
            _scope_keys(db, scoped_key)
        db.execute(f"PRAGMA user_version={VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _scope_keys(db: sqlite3.Connection, scoped_key: Callable[[str | None, str], str]) -> None:
    rows = db.execute("SELECT id, owner, idempotency_key, data FROM jobs WHERE idempotency_key IS NOT NULL").fetchall()
    db.execute("UPDATE jobs SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL")  # free every key first
    for job_id, owner, stored, data in rows:
        key = stored.removeprefix(f"{owner}/") if owner else stored
        record = json.loads(data)
        record["idempotency_key"] = key
        try:
            db.execute("UPDATE jobs SET idempotency_key=?, data=? WHERE id=?",
                       (scoped_key(owner, key), json.dumps(record), job_id))
        except sqlite3.IntegrityError:  # two records of one owner claimed the same key: the first keeps it
            log.warning("job %s: idempotency key %r of owner %r is taken by an older job; dropped", job_id, key, owner)
