"""Stored responses: what ``previous_response_id`` continues and ``GET /v1/responses/{id}`` reads.

One SQLite database, ``responses.sqlite3`` in the state directory, opened on
first use; its files hold whole conversations, so they are the owner's alone
(the directory made 0700, the files 0600: ``_sqlite``). Every call runs in a
thread, one at a time on the one connection, and a cancelled caller waits for
its thread (Trio's default): a transaction is never abandoned halfway, nor the
connection used by two threads at once.

Bounded two ways. Entries older than the age bound are removed (at open and on
each put) and never read. After each put the oldest entries go until the
stored bytes (the JSON of each entry's response, input items and history, and
an allowance for SQLite's records of them) are within the byte bound; an entry
larger than the bound by itself is not stored.

A file there that is not this store's database (corrupt, another program's,
another schema version) is moved aside (``_sqlite``) with a log line, and the
store starts empty: the server never fails to start or answer over it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import msgspec
import trio

from ..._config import Config
from ..._errors import ErrorKind, ServerError
from ._sqlite import move_aside, open_database, set_aside_path, transaction, unreadable

__all__ = ["FILE_NAME", "InputItemsPage", "ResponseStore", "StoredResponse", "state_directory"]

log = logging.getLogger("mlxtrio.api")

FILE_NAME = "responses.sqlite3"
_DAY = 86400.0
# Bytes counted for each entry and each input item beyond their JSON: SQLite's own records of them
# (row headers, ids, index entries), so that the file stays near the bound however small the items.
_ENTRY_BYTES = 256
_ITEM_BYTES = 64
# A vacuum returns free pages to the file system once they are this share of the file.
_FREE_SHARE = 4

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def state_directory(config: Config) -> Path:
    """Where the server keeps state of its own: ``state_dir``, else ``cache_dir``'s ``state`` folder."""
    return config.state_dir if config.state_dir is not None else config.cache_dir / "state"


@attrs.frozen(kw_only=True)
class StoredResponse:
    """A stored response as ``put`` was given it; ``created_at`` is when it was stored (Unix seconds)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    previous_response_id: str | None
    created_at: float
    # The history's size as stored (its JSON's bytes), known without encoding it again.
    history_bytes: int = 0


@attrs.frozen(kw_only=True)
class InputItemsPage:
    """One page of a stored response's input items, in the order asked for."""

    items: list[dict[str, Any]]
    has_more: bool


@attrs.define(eq=False)
class ResponseStore:
    """Stored responses by owner (the API key's owner id; "" when the server has no keys).

    A response of one owner is invisible to another: ``get``, ``input_items``
    and ``delete`` answer for it as for an id never stored. Reads raise
    ``ServerError`` (internal) when the database cannot be used; ``put`` logs
    that and answers False instead, so that a response is still served.
    """

    directory: Path
    max_bytes: int = attrs.field(kw_only=True)
    max_age_days: float = attrs.field(kw_only=True)
    # Unix time; tests move it.
    clock: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    # Counted since the server started, for statistics().
    stored: int = attrs.field(default=0, init=False)
    evicted: int = attrs.field(default=0, init=False)
    expired: int = attrs.field(default=0, init=False)
    too_large: int = attrs.field(default=0, init=False)
    failures: int = attrs.field(default=0, init=False)
    set_aside: int = attrs.field(default=0, init=False)
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1), init=False)
    _failing: bool = attrs.field(default=False, init=False)

    @classmethod
    def from_config(cls, config: Config) -> ResponseStore:
        return cls(state_directory(config), max_bytes=config.responses_store_bytes, max_age_days=config.responses_store_days)

    @property
    def path(self) -> Path:
        return self.directory / FILE_NAME

    @property
    def enabled(self) -> bool:
        """False when the byte bound is 0: nothing is stored, nothing found, no file made."""
        return self.max_bytes > 0

    async def put(
        self,
        owner: str,
        response_id: str,
        *,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        history: list[dict[str, Any]],
        previous_response_id: str | None = None,
    ) -> bool:
        """Store a response (replacing one of the same owner and id); whether it was stored.

        ``input_items`` are listed by ``input_items()`` and each needs a string
        ``"id"``; ``history`` is what a response continuing this one starts from.
        False: the store is off, the entry alone is over the byte bound, or the
        database failed (logged). Older entries may be evicted to make room.
        ValueError: an input item without a string id.
        """
        if not self.enabled:
            return False
        for item in input_items:
            if not isinstance(item.get("id"), str):
                raise ValueError("every input item needs a string id")
        try:
            return await self._run(_put, owner, response_id, response, input_items, history, previous_response_id)
        except ServerError:
            return False

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None (never stored, another owner's, evicted, expired, deleted)."""
        if not self.enabled:
            return None
        return await self._run(_get, owner, response_id)

    async def input_items(
        self,
        owner: str,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> InputItemsPage | None:
        """A page of the response's input items, or None where ``get`` would be None.

        ``order``: "asc" from the first item, "desc" from the last; ``after``: an
        item id, the page starting past it in that order (an id not among the
        items: an empty page).
        """
        if limit < 1 or order not in ("asc", "desc"):
            raise ValueError(f"limit must be at least 1 and order asc or desc, not {limit!r} and {order!r}")
        if not self.enabled:
            return None
        return await self._run(_input_items, owner, response_id, after, limit, order)

    async def delete(self, owner: str, response_id: str) -> bool:
        """Remove the response; False where ``get`` would be None."""
        if not self.enabled:
            return False
        return await self._run(_delete, owner, response_id)

    async def statistics(self) -> dict[str, object]:
        """Bounds, counters, and what is stored now (None before first use or when unreadable); opens nothing."""
        entries = size = None
        if self._connection is not None:
            entries, size = await trio.to_thread.run_sync(self._totals, limiter=self._limiter)
        return {
            "enabled": self.enabled,
            "path": str(self.path),
            "max_bytes": self.max_bytes,
            "max_age_days": self.max_age_days,
            "entries": entries,
            "bytes": size,
            "stored": self.stored,
            "evicted": self.evicted,
            "expired": self.expired,
            "too_large": self.too_large,
            "failures": self.failures,
            "set_aside": self.set_aside,
        }

    async def aclose(self) -> None:
        """Close the database (a later call opens it again)."""
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)

    async def _run(self, operation: Callable[..., Any], *args: object) -> Any:
        return await trio.to_thread.run_sync(self._call, operation, *args, limiter=self._limiter)

    def _call(self, operation: Callable[..., Any], *args: object) -> Any:
        """``operation(self, connection, *args)`` in this thread; an unreadable file is set aside and it runs again."""
        try:
            try:
                result = operation(self, self._connection or self._open(), *args)
            except sqlite3.DatabaseError as exc:
                if not unreadable(exc):
                    raise
                self._close()
                move_aside(self.path)
                self._note_set_aside(f"cannot be read ({exc})")
                result = operation(self, self._open(), *args)
        except (OSError, sqlite3.Error) as exc:
            self._close()
            self.failures += 1
            if not self._failing:
                log.error("the response store %s cannot be used: %s", self.path, exc)
                self._failing = True
            raise ServerError(ErrorKind.INTERNAL, "the response store cannot be used now; the server's log says why") from exc
        if self._failing:
            log.info("the response store %s works again", self.path)
            self._failing = False
        return result

    def _open(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection, why = open_database(self.path)
        if why is not None:
            self._note_set_aside(why)
        try:
            with transaction(connection):
                self._expire(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _totals(self) -> tuple[int, int] | tuple[None, None]:
        """Entries and bytes stored, if the database is open and readable: never a reason to open it."""
        try:
            return self._connection.execute("SELECT entries, bytes FROM totals").fetchone()
        except (AttributeError, sqlite3.Error):  # closed meanwhile, or failing: the next call will say
            return None, None

    def _close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _note_set_aside(self, why: str) -> None:
        self.set_aside += 1
        log.warning("the response store %s %s: moved aside to %s; starting empty", self.path, why, set_aside_path(self.path))

    def _expire(self, connection: sqlite3.Connection) -> None:
        self.expired += connection.execute("DELETE FROM responses WHERE created_at < ?", (self._cutoff(),)).rowcount

    def _cutoff(self) -> float:
        return self.clock() - self.max_age_days * _DAY


def _put(
    store: ResponseStore,
    connection: sqlite3.Connection,
    owner: str,
    response_id: str,
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    history: list[dict[str, Any]],
    previous_response_id: str | None,
) -> bool:
    items = [(item["id"], _encode(item)) for item in input_items]
    response_json, history_json = _encode(response), _encode(history)
    size = _ENTRY_BYTES + len(response_json) + len(history_json) + sum(_ITEM_BYTES + len(item) for _, item in items)
    if size > store.max_bytes:
        store.too_large += 1
        return False
    with transaction(connection):
        store._expire(connection)
        connection.execute("DELETE FROM responses WHERE owner = ? AND id = ?", (owner, response_id))
        seq = connection.execute(
            "INSERT INTO responses (owner, id, created_at, previous_response_id, response, history, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (owner, response_id, store.clock(), previous_response_id, response_json, history_json, size),
        ).lastrowid
        connection.executemany(
            "INSERT INTO input_items (response, position, id, item) VALUES (?, ?, ?, ?)",
            ((seq, position, item_id, item) for position, (item_id, item) in enumerate(items)),
        )
        evicted = _evict(connection, store.max_bytes)
    store.stored += 1
    store.evicted += evicted
    if evicted:
        free, pages = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("freelist_count", "page_count"))
        if free * _FREE_SHARE > pages:
            connection.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
    return True


def _evict(connection: sqlite3.Connection, max_bytes: int) -> int:
    """Remove the oldest entries until the stored bytes are within ``max_bytes``; how many went."""
    excess = connection.execute("SELECT bytes FROM totals").fetchone()[0] - max_bytes
    evicted = 0
    while excess > 0:
        last = None
        for seq, size in connection.execute("SELECT seq, bytes FROM responses ORDER BY seq LIMIT 64").fetchall():
            last, excess, evicted = seq, excess - size, evicted + 1
            if excess <= 0:
                break
        if last is None:
            break
        connection.execute("DELETE FROM responses WHERE seq <= ?", (last,))
    return evicted


def _find(store: ResponseStore, connection: sqlite3.Connection, owner: str, response_id: str, columns: str) -> tuple | None:
    return connection.execute(
        f"SELECT {columns} FROM responses WHERE owner = ? AND id = ? AND created_at >= ?", (owner, response_id, store._cutoff())
    ).fetchone()


def _get(store: ResponseStore, connection: sqlite3.Connection, owner: str, response_id: str) -> StoredResponse | None:
    with transaction(connection, "BEGIN"):
        row = _find(store, connection, owner, response_id, "seq, response, history, previous_response_id, created_at")
        if row is None:
            return None
        seq, response, history, previous_response_id, created_at = row
        items = connection.execute("SELECT item FROM input_items WHERE response = ? ORDER BY position", (seq,)).fetchall()
    return StoredResponse(
        response=_decode(response),
        input_items=[_decode(item) for (item,) in items],
        history=_decode(history),
        previous_response_id=previous_response_id,
        created_at=created_at,
        history_bytes=len(history),
    )


def _input_items(
    store: ResponseStore, connection: sqlite3.Connection, owner: str, response_id: str, after: str | None, limit: int, order: str
) -> InputItemsPage | None:
    with transaction(connection, "BEGIN"):
        row = _find(store, connection, owner, response_id, "seq")
        if row is None:
            return None
        (seq,) = row
        start = -1 if order == "asc" else 1 << 62
        if after is not None:
            (start,) = connection.execute("SELECT min(position) FROM input_items WHERE response = ? AND id = ?", (seq, after)).fetchone()
            if start is None:
                return InputItemsPage(items=[], has_more=False)
        comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        rows = connection.execute(
            f"SELECT item FROM input_items WHERE response = ? AND position {comparison} ? ORDER BY position {direction} LIMIT ?",
            (seq, start, limit + 1),
        ).fetchall()
    return InputItemsPage(items=[_decode(item) for (item,) in rows[:limit]], has_more=len(rows) > limit)


def _delete(store: ResponseStore, connection: sqlite3.Connection, owner: str, response_id: str) -> bool:
    with transaction(connection):
        row = _find(store, connection, owner, response_id, "seq")
        if row is not None:
            connection.execute("DELETE FROM responses WHERE seq = ?", row)
    return row is not None
