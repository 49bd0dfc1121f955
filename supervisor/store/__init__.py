"""Job storage: the store's contract (``protocol``), the SQLite store, its in-memory twin, schema migrations, retention.

May import: ``llmsup.supervisor.core`` (the job record), ``rundir``, ``settings``. Nothing from ``cluster``, ``web``,
zmq or ipyparallel. ``from llmsup.supervisor.store import SQLiteStore`` and the other names below are the public paths.
"""

from llmsup.supervisor.store.memory import MemoryStore
from llmsup.supervisor.store.protocol import PRUNE_BATCH, DuplicateKey, JobStore, SyncMode, expires_at, ready_order, scoped_key
from llmsup.supervisor.store.sqlite import SQLiteStore, StoreReader

__all__ = ["PRUNE_BATCH", "DuplicateKey", "JobStore", "MemoryStore", "SQLiteStore", "StoreReader", "SyncMode", "expires_at",
           "ready_order", "scoped_key"]
