"""The response store's database file: created private, made the store's, set aside when it is not.

The file is created 0600 before SQLite opens it, never through a symlink, and
SQLite gives its -wal, -shm and -journal files the database's own mode, so
none of them is ever readable by others, whatever the umask (which is the
whole process's, so not changed here). A file that is not this store's
database (damaged, another program's, another schema version) is moved aside
to ``<name>.unreadable``, replacing an earlier one, so that the disk stays
bounded however often it happens.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["move_aside", "open_database", "set_aside_path", "transaction", "unreadable"]

# Marks the file as this store's, so that another program's SQLite database is never taken for it.
_APPLICATION_ID = 0x6D6C7872
_SCHEMA_VERSION = 1
_SCHEMA = f"""
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_SCHEMA_VERSION};
CREATE TABLE responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    previous_response_id TEXT,
    response BLOB NOT NULL,
    history BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    UNIQUE (owner, id)
);
CREATE INDEX responses_by_age ON responses (created_at);
CREATE TABLE input_items (
    response INTEGER NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (response, position)
);
CREATE INDEX input_items_by_id ON input_items (response, id);
CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO totals VALUES (1, 0, 0);
CREATE TRIGGER responses_added AFTER INSERT ON responses BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.bytes;
END;
CREATE TRIGGER responses_removed AFTER DELETE ON responses BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.bytes;
    DELETE FROM input_items WHERE response = OLD.seq;
END;
"""


def open_database(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """The store's database at ``path`` (made if new), in WAL mode; and why a file found there was moved aside, or None."""
    _create_private(path)
    connection = _connect(path)
    try:
        why = _adopt(connection)
        if why is not None:
            connection.close()
            move_aside(path)
            _create_private(path)
            connection = _connect(path)
            _adopt(connection)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        connection.close()
        raise
    return connection, why


def set_aside_path(path: Path) -> Path:
    return path.with_name(path.name + ".unreadable")


def move_aside(path: Path) -> None:
    """Move the (closed) database and its journals aside, replacing an earlier one; its -shm is only a cache."""
    aside = set_aside_path(path)
    os.replace(path, aside)
    for suffix in ("-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{aside}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}-shm")


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """A transaction (IMMEDIATE: a writer takes the lock first, so another server's writer never deadlocks it)."""
    connection.execute(begin)
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # the error that ended it says more than a failed rollback
            connection.rollback()
        raise
    connection.commit()


def unreadable(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file is damaged or no database at all (not: busy, full, read-only ...)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _create_private(path: Path) -> None:
    """Make ``path`` (never through a symlink) a regular file that only its owner may read: before SQLite opens it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path} is not a regular file")
        if mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            side = Path(f"{path}{suffix}")
            if side.lstat().st_mode & 0o077 and not side.is_symlink():
                side.chmod(0o600)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level None: transactions are _transaction's; check_same_thread off: one thread at a time, not always the same one.
    return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)


def _adopt(connection: sqlite3.Connection) -> str | None:
    """Make an empty database this store's; why the database is not this store's, or None."""
    connection.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on an empty database only
    with transaction(connection):
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if (application_id, version) == (0, 0) and not connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            for statement in _statements(_SCHEMA):
                connection.execute(statement)
            return None
    if application_id != _APPLICATION_ID:
        return "is not an mlxtrio response store (another program's SQLite database)"
    if version != _SCHEMA_VERSION:
        return f"has schema version {version}, not this server's {_SCHEMA_VERSION}"
    return None


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (executescript would commit the transaction around them)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
