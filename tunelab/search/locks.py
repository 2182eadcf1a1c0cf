"""The study lock: serialises the few steps where workers must not race (counting and starting a trial,
enqueueing warm starts, rewriting the front table) across processes and machines.

PostgreSQL: a session-level advisory lock keyed by the study name (released by the server if the worker dies).
SQLite: a file lock beside the database file (released by the kernel if the worker dies). An in-memory SQLite
database lives in one process, so a thread lock is enough.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from tunelab.errors import TunelabError

__all__ = ["study_lock"]


def study_lock(engine: Engine, study: str) -> AbstractContextManager[None]:
    """A re-usable context manager holding the lock of `study` in the database behind `engine`."""
    url = make_url(str(engine.url))
    if engine.dialect.name == "postgresql":
        return _AdvisoryLock(engine, _key(study))
    if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(f"{url.database}.lock")
        if path.exists() and not path.is_file():
            raise TunelabError(
                f"{path}: the study's lock file is not a regular file; remove it (no worker holds it)"
            )
        return FileLock(path)
    return threading.RLock()


def _key(study: str) -> int:
    """A stable signed 64-bit advisory-lock key for a study name."""
    digest = hashlib.sha256(f"tunelab-study:{study}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _AdvisoryLock(AbstractContextManager[None]):
    def __init__(self, engine: Engine, key: int) -> None:
        self.engine, self.key = engine, key
        self._held = threading.local()

    def __enter__(self) -> None:
        connection = self.engine.connect()
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        connection.commit()
        self._held.connection = connection

    def __exit__(self, *exc: object) -> None:
        connection = self._held.connection
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            connection.commit()
        finally:
            connection.close()
            self._held.connection = None
