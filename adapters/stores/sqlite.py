"""The embedded store: one SQLite file in WAL mode, through aiosqlite.

Two connections: the writer runs the committer's batches, each one `BEGIN IMMEDIATE` transaction
with a fixed handful of statements however many writes it carries (multi-row inserts with
RETURNING for dedupe and the journal); the reader serves activation and the API without queuing
behind writes (WAL lets readers and the writer work at once).

`synchronous=NORMAL` (the default) survives kill -9 but may lose the last transactions on power
loss; `SQLITE_SYNCHRONOUS=FULL` survives both at the cost measured in bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import aiosqlite

from engine.errors import ConfigError, StoreRejected, StoreUnavailable
from engine.ports import (
    JSON,
    Accept,
    Accepted,
    Alias,
    Commit,
    ConversationRow,
    Delivered,
    JournalEntry,
    MessageRow,
    Op,
    Pruned,
    Record,
    Sending,
    StatusWrite,
    TimerWrite,
)
from engine.records import STATUS_RANK

from .rows import (
    MESSAGE_COLUMNS,
    RECORD_COLUMNS,
    conversation,
    message,
    message_values,
    record,
    record_data,
)

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE dedupe (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX dedupe_at ON dedupe (at);
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        contact TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX journal_at ON journal (at);
    CREATE TABLE aliases (
        number TEXT NOT NULL, alias TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (number, alias)
    ) WITHOUT ROWID;
    CREATE INDEX aliases_alias ON aliases (alias);
    CREATE TABLE conversations (
        key TEXT PRIMARY KEY,
        number TEXT NOT NULL,
        flow TEXT NOT NULL,
        state TEXT,
        handoff INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        last_seq INTEGER NOT NULL,
        snapshot TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX conversations_updated ON conversations (updated_at);
    CREATE TABLE messages (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        contact TEXT NOT NULL,
        direction TEXT NOT NULL,
        number TEXT NOT NULL,
        type TEXT NOT NULL,
        text TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        at REAL NOT NULL,
        provider_id TEXT,
        payload TEXT,
        error_code INTEGER,
        error_title TEXT
    );
    CREATE INDEX messages_contact ON messages (contact, n);
    CREATE INDEX messages_provider ON messages (provider_id);
    CREATE INDEX messages_outbox ON messages (n) WHERE status = 'pending';
    CREATE TABLE statuses (
        provider_id TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        at REAL NOT NULL,
        error_code INTEGER,
        error_title TEXT,
        PRIMARY KEY (provider_id, status)
    ) WITHOUT ROWID;
    CREATE INDEX statuses_at ON statuses (at);
    CREATE TABLE raw_events (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX raw_events_at ON raw_events (at);
    """,
    # 2: a row that readiness rewrites to prove the store can still write
    """
    CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
    INSERT INTO heartbeat VALUES (1, 0);
    """,
    # 3: timers (a step's timeout or delay, the hand-off expiry), one per contact and kind
    """
    CREATE TABLE timers (
        contact TEXT NOT NULL,
        kind TEXT NOT NULL,
        due REAL NOT NULL,
        step INTEGER NOT NULL,
        rung INTEGER NOT NULL,
        PRIMARY KEY (contact, kind)
    ) WITHOUT ROWID;
    CREATE INDEX timers_due ON timers (due, contact, kind);
    ALTER TABLE heartbeat ADD COLUMN pad BLOB;
    """,
    # 4: when a send of an outbox row last left, so a restart knows what may have gone
    """
    ALTER TABLE messages ADD COLUMN sending_at REAL;
    """,
    # 5: documents that actions keep (orders, invoices)
    """
    CREATE TABLE records (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        contact TEXT NOT NULL,
        status TEXT NOT NULL,
        due REAL,
        at REAL NOT NULL,
        version INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    ) WITHOUT ROWID;
    CREATE INDEX records_contact ON records (kind, contact, at);
    CREATE INDEX records_status ON records (kind, status, at);
    CREATE INDEX records_due ON records (kind, due) WHERE due IS NOT NULL;
    """,
]

T = TypeVar("T")

PROBE_BYTES = 16384  # what readiness writes to prove the store can write
CHUNK = 500  # rows per multi-row statement (SQLite allows 32766 parameters)

# Errors caused by what a write holds, not by the state of the database: retrying cannot help.
PRUNE_CHUNK = 5000  # rows one DELETE removes: pruning never holds the writer for long

REJECTED = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    UnicodeError,
    TypeError,
    OverflowError,
)

APPLY_STATUSES = """
UPDATE messages SET
    status = best.status,
    rank = best.rank,
    error_code = COALESCE(best.error_code, messages.error_code),
    error_title = COALESCE(best.error_title, messages.error_title)
FROM (
    SELECT s.provider_id, s.status, s.rank, s.error_code, s.error_title FROM statuses s
    WHERE s.provider_id IN (SELECT value FROM json_each(?))
      AND s.rank = (SELECT MAX(rank) FROM statuses t WHERE t.provider_id = s.provider_id)
) AS best
WHERE messages.provider_id = best.provider_id AND messages.direction = 'out'
  AND messages.rank < best.rank
"""


class SqliteStore:
    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self.commits = 0
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._held: IO[str] | None = None  # the open lock file while this store is open

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._hold()
            self._w = await self._connect()
            await self._migrate(self._w)
            self._r = await self._connect()
            await self.ping()  # the file must take a write, not only open
        except BaseException as e:
            # Every connection is closed, or its (non-daemon) thread keeps the process alive.
            await self.close()
            if isinstance(e, OSError | sqlite3.Error):
                raise ConfigError(f"DATABASE_URL: cannot use SQLite file {self.path}: {e}") from e
            raise

    def _hold(self) -> None:
        """One engine per file: a second one (a double start, two replicas on one volume)
        would replay the same outbox and send every pending reply twice. The lock is the
        kernel's (flock), so a process killed with -9 gives it up."""
        lock = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()[:20] or "another process"
            lock.close()
            raise ConfigError(
                f"DATABASE_URL: {self.path} is in use by another engine (process {holder});"
                " one engine per SQLite file"
            ) from None
        except BaseException:
            lock.close()
            raise
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._held = lock

    async def _connect(self) -> aiosqlite.Connection:
        conn = aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn
        except BaseException:
            # aiosqlite stops its worker thread without waiting for it; left alone, the thread
            # may outlive the event loop and die with a traceback on the way out.
            worker = getattr(conn, "_thread", None)
            if worker is not None:
                await asyncio.to_thread(worker.join, 5.0)
            raise
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={self.synchronous}")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA temp_store=MEMORY")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = await conn.execute_fetchall("SELECT MAX(version) FROM schema_version")
        current = next(iter(rows))[0] or 0
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"DATABASE_URL: {self.path} has schema version {current}, newer than this "
                f"engine's {len(MIGRATIONS)}; upgrade the engine"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await conn.executescript(
                f"BEGIN IMMEDIATE; {script}; INSERT INTO schema_version VALUES ({version}); COMMIT;"
            )

    async def close(self) -> None:
        conns, self._r, self._w = (self._r, self._w), None, None
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()
        held, self._held = self._held, None
        if held is not None:
            held.close()  # releases the lock

    async def ping(self) -> None:
        """Prove the store can write: rewrite the heartbeat row in a transaction of its own."""
        async with self._lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                # As many pages as a small real write needs: a one-page probe can pass where
                # the next webhook would not (a failed write leaves a little room in the WAL).
                await conn.execute(
                    "UPDATE heartbeat SET at = at + 1, pad = zeroblob(?) WHERE id = 1",
                    (PROBE_BYTES,),
                )
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._w is None:
            raise sqlite3.ProgrammingError("store is closed")
        return self._w

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._r is None:
            raise sqlite3.ProgrammingError("store is closed")
        return self._r

    # --- writes --------------------------------------------------------------------------------

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        results = await self._transaction(lambda conn: self._apply(conn, ops))
        self.commits += 1
        return results

    async def _transaction(
        self,
        work: Callable[[aiosqlite.Connection], Awaitable[T]],
        keep: Callable[[T], bool] = lambda _result: True,
    ) -> T:
        """`work` in one writer transaction, committed when `keep(result)`, else rolled back;
        an error caused by what it writes is StoreRejected."""
        async with self._lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await work(conn)
                await conn.execute("COMMIT" if keep(result) else "ROLLBACK")
            except BaseException as e:
                await _rollback(conn)
                if isinstance(e, REJECTED):
                    raise StoreRejected(f"{type(e).__name__}: {e}") from e
                raise
            return result

    async def _apply(self, conn: aiosqlite.Connection, ops: Sequence[Op]) -> list[Accepted | None]:
        accepts = [op for op in ops if isinstance(op, Accept)]
        commits = [op for op in ops if isinstance(op, Commit)]
        delivered = [op for op in ops if isinstance(op, Delivered)]
        sending = [op for op in ops if isinstance(op, Sending)]
        touched: set[str] = set()
        results: dict[int, Accepted] = {}
        if accepts:
            results = await self._accept(conn, accepts, touched)
        if commits:
            await self._commit(conn, commits)
        if sending:
            await conn.executemany(
                "UPDATE messages SET sending_at = ? WHERE id = ? AND status = 'pending'",
                [(op.at, op.id) for op in sending],
            )
        if delivered:
            await self._delivered(conn, delivered, touched)
        if touched:
            await conn.execute(APPLY_STATUSES, (json.dumps(sorted(touched)),))
        return [results.get(id(op)) if isinstance(op, Accept) else None for op in ops]

    async def _accept(
        self, conn: aiosqlite.Connection, accepts: list[Accept], touched: set[str]
    ) -> dict[int, Accepted]:
        entries = [(op, e) for op in accepts for e in op.journal]
        new_keys = await _insert_returning(
            conn,
            "INSERT INTO dedupe (key, at) VALUES {} ON CONFLICT DO NOTHING RETURNING key",
            [(e.event_id, e.at) for _op, e in entries],
            2,
        )
        fresh: list[tuple[Accept, JournalEntry]] = []
        duplicates: dict[int, int] = {}
        for op, e in entries:
            if e.event_id in new_keys:
                new_keys.discard(e.event_id)  # a second copy in the same batch is a duplicate
                fresh.append((op, e))
            else:
                duplicates[id(op)] = duplicates.get(id(op), 0) + 1
        seqs: dict[str, int] = {}
        for chunk in _chunks(fresh, CHUNK):
            rows = await conn.execute_fetchall(
                "INSERT INTO journal (contact, event_id, event, at) VALUES "
                + ",".join(["(?,?,?,?)"] * len(chunk))
                + " RETURNING seq, event_id",
                [v for _op, e in chunk for v in (e.contact, e.event_id, json.dumps(e.event), e.at)],
            )
            seqs.update({event_id: seq for seq, event_id in rows})
        statuses = [(op, s) for op in accepts for s in op.statuses]
        new_statuses = await _insert_returning(
            conn,
            "INSERT INTO statuses (provider_id, status, rank, at, error_code, error_title)"
            " VALUES {}"
            " ON CONFLICT DO NOTHING RETURNING provider_id || char(0) || status",
            [
                (s.provider_id, s.status, s.rank, s.at, s.error_code, s.error_title)
                for _op, s in statuses
            ],
            6,
        )
        raw = [(r.kind, json.dumps(r.payload), r.at) for op in accepts for r in op.raw]
        if raw:
            await conn.executemany("INSERT INTO raw_events (kind, payload, at) VALUES (?,?,?)", raw)
        aliases = [(a.number, a.alias, a.key) for op in accepts for a in op.aliases]
        if aliases:
            await conn.executemany(
                "INSERT INTO aliases (number, alias, key) VALUES (?,?,?)"
                " ON CONFLICT (number, alias) DO UPDATE SET key = excluded.key",
                aliases,
            )
        results = {}
        for op in accepts:
            mine = [(seqs[e.event_id], e) for o, e in fresh if o is op]
            seen: list[StatusWrite] = []
            dup_statuses = 0
            for o, s in statuses:
                if o is not op:
                    continue
                key = f"{s.provider_id}\0{s.status}"
                if key in new_statuses:
                    new_statuses.discard(key)
                    seen.append(s)
                    touched.add(s.provider_id)
                else:
                    dup_statuses += 1
            results[id(op)] = Accepted(
                entries=sorted(mine, key=lambda x: x[0]),
                duplicate_messages=duplicates.get(id(op), 0),
                new_statuses=seen,
                duplicate_statuses=dup_statuses,
            )
        return results

    async def _commit(self, conn: aiosqlite.Connection, commits: list[Commit]) -> None:
        await conn.executemany(
            "INSERT INTO conversations"
            " (key, number, flow, state, handoff, updated_at, last_seq, snapshot)"
            " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE SET number = excluded.number,"
            " flow = excluded.flow, state = excluded.state, handoff = excluded.handoff,"
            " updated_at = excluded.updated_at, last_seq = excluded.last_seq,"
            " snapshot = excluded.snapshot",
            [
                (
                    c.key,
                    c.number,
                    c.flow,
                    c.state,
                    int(c.handoff),
                    c.updated_at,
                    int(c.snapshot.get("last_seq") or 0),
                    json.dumps(c.snapshot),
                )
                for c in (op.conversation for op in commits)
            ],
        )
        latest: dict[tuple[str, str], TimerWrite] = {}
        for t in (t for op in commits for t in op.timers):  # in order: the last write stays
            latest[(t.contact, t.kind)] = t
        timers = list(latest.values())
        cleared = [(t.contact, t.kind) for t in timers if t.due is None]
        if cleared:
            await conn.executemany("DELETE FROM timers WHERE contact = ? AND kind = ?", cleared)
        armed = [(t.contact, t.kind, t.due, t.step, t.rung) for t in timers if t.due is not None]
        if armed:
            await conn.executemany(
                "INSERT INTO timers (contact, kind, due, step, rung) VALUES (?,?,?,?,?)"
                " ON CONFLICT (contact, kind) DO UPDATE SET due = excluded.due,"
                " step = excluded.step, rung = excluded.rung",
                armed,
            )
        rows = [m for op in commits for m in op.messages]
        if rows:
            await conn.executemany(
                "INSERT INTO messages (id, contact, direction, number, type, text, status, rank,"
                " at,"
                " provider_id, payload, error_code, error_title) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (id) DO NOTHING",
                [message_values(m) for m in rows],
            )

    async def _delivered(
        self, conn: aiosqlite.Connection, delivered: list[Delivered], touched: set[str]
    ) -> None:
        await conn.executemany(
            "UPDATE messages SET status = ?, rank = ?, provider_id = COALESCE(?, provider_id),"
            " error_code = ?, error_title = ?, type = COALESCE(?, type),"
            " text = COALESCE(?, text) WHERE id = ? AND rank < ?",
            [
                (
                    d.status,
                    STATUS_RANK[d.status],
                    d.provider_id,
                    d.error_code,
                    d.error_title,
                    d.type,
                    d.text,
                    d.id,
                    STATUS_RANK[d.status],
                )
                for d in delivered
            ],
        )
        touched.update(d.provider_id for d in delivered if d.provider_id)

    # --- reads ---------------------------------------------------------------------------------

    async def aliases(self) -> list[Alias]:
        rows = await self.reader.execute_fetchall("SELECT number, alias, key FROM aliases")
        return [Alias(*r) for r in rows]

    async def conversation(self, key: str) -> ConversationRow | None:
        try:
            rows = list(
                await self.reader.execute_fetchall(
                    "SELECT key, number, flow, state, handoff, updated_at, snapshot"
                    " FROM conversations WHERE key = ?",
                    (key,),
                )
            )
        except (sqlite3.OperationalError, sqlite3.ProgrammingError, ValueError) as e:
            raise StoreUnavailable(f"cannot read conversation: {e}") from e
        return conversation(rows[0]) if rows else None

    async def unhandled(self, after: int = 0, limit: int = 0) -> list[tuple[int, str, JSON]]:
        rows = await self.reader.execute_fetchall(
            "SELECT j.seq, j.contact, j.event FROM journal j"
            " LEFT JOIN conversations c ON c.key = j.contact"
            " WHERE j.seq > ? AND j.seq > COALESCE(c.last_seq, 0) ORDER BY j.seq LIMIT ?",
            (after, limit or -1),
        )
        return [(seq, contact, json.loads(event)) for seq, contact, event in rows]

    async def outbox(self, after: int = 0, limit: int = 0) -> list[MessageRow]:
        rows = await self.reader.execute_fetchall(
            f"SELECT n, sending_at, {MESSAGE_COLUMNS} FROM messages"
            " WHERE status = 'pending' AND n > ? ORDER BY n LIMIT ?",
            (after, limit or -1),
        )
        return [message(r[2:], r[0], r[1]) for r in rows]

    async def transcript(self, key: str, limit: int) -> list[MessageRow]:
        rows = await self.reader.execute_fetchall(
            f"SELECT * FROM (SELECT n, {MESSAGE_COLUMNS} FROM messages WHERE contact = ?"
            " ORDER BY n DESC LIMIT ?) ORDER BY n",
            (key, limit),
        )
        return [message(r[1:]) for r in rows]

    async def conversations(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[ConversationRow]:
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if handoff is not None:
            where.append("handoff = ?")
            args.append(int(handoff))
        sql = "SELECT key, number, flow, state, handoff, updated_at, snapshot FROM conversations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC LIMIT ?"
        rows = await self.reader.execute_fetchall(sql, (*args, limit))
        return [conversation(r) for r in rows]

    async def contacts(self, alias: str, number: str | None) -> list[str]:
        if number is None:
            rows = await self.reader.execute_fetchall(
                "SELECT key FROM aliases WHERE alias = ?", (alias,)
            )
        else:
            rows = await self.reader.execute_fetchall(
                "SELECT key FROM aliases WHERE alias = ? AND number = ?", (alias, number)
            )
        return sorted({r[0] for r in rows})

    async def timers(self, after: tuple[float, str, str] | None, limit: int) -> list[TimerWrite]:
        sql = "SELECT contact, kind, due, step, rung FROM timers"
        args: tuple[Any, ...] = ()
        if after is not None:
            sql += " WHERE (due, contact, kind) > (?, ?, ?)"
            args = after
        rows = await self.reader.execute_fetchall(
            sql + " ORDER BY due, contact, kind LIMIT ?", (*args, limit)
        )
        return [
            TimerWrite(contact, kind, due, step, rung) for contact, kind, due, step, rung in rows
        ]

    async def record(self, kind: str, key: str) -> Record | None:
        rows = list(
            await self.reader.execute_fetchall(
                f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = ? AND key = ?", (kind, key)
            )
        )
        return record(rows[0]) if rows else None

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        sql = f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = ?"
        args: list[Any] = [kind]
        if contact is not None:
            sql += " AND contact = ?"
            args.append(contact)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        rows = await self.reader.execute_fetchall(
            sql + " ORDER BY at DESC, key LIMIT ?", (*args, limit)
        )
        return [record(r) for r in rows]

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        rows = await self.reader.execute_fetchall(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = ? AND due IS NOT NULL"
            " AND due <= ? ORDER BY due, key LIMIT ?",
            (kind, before, limit),
        )
        return [record(r) for r in rows]

    async def put_records(self, records: Sequence[Record]) -> bool:
        return await self._transaction(lambda conn: self._put_records(conn, records), bool)

    @staticmethod
    async def _put_records(conn: aiosqlite.Connection, records: Sequence[Record]) -> bool:
        for r in records:
            values = (r.contact, r.status, r.due, r.at, r.version + 1, record_data(r))
            if r.version == 0:
                cursor = await conn.execute(
                    "INSERT INTO records (contact, status, due, at, version, data, kind, key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*values, r.kind, r.key),
                )
            else:
                cursor = await conn.execute(
                    "UPDATE records SET contact = ?, status = ?, due = ?, at = ?, version = ?,"
                    " data = ? WHERE kind = ? AND key = ? AND version = ?",
                    (*values, r.kind, r.key, r.version),
                )
            if cursor.rowcount != 1:
                return False
        return True

    async def prune(self, *, dedupe_before: float, journal_before: float) -> Pruned:
        """Old dedupe keys, statuses, raw events and handled journal entries, deleted in chunks
        of PRUNE_CHUNK rows, the writer taken for one chunk at a time: the committer's
        transactions go between them, so a large backlog of old rows never stalls intake."""
        counts: list[int] = []
        for table, key, where, before in (
            ("dedupe", "key", "at < ?", dedupe_before),
            (
                "journal",
                "seq",
                "at < ? AND seq <= COALESCE("
                "(SELECT last_seq FROM conversations c WHERE c.key = journal.contact), 0)",
                journal_before,
            ),
            ("statuses", "provider_id, status", "at < ?", dedupe_before),
            ("raw_events", "n", "at < ?", dedupe_before),
        ):
            sql = (  # by primary key: some of these tables have no rowid
                f"DELETE FROM {table} WHERE ({key}) IN"
                f" (SELECT {key} FROM {table} WHERE {where} LIMIT {PRUNE_CHUNK})"
            )
            total = 0
            while True:
                async with self._lock:
                    cursor = await self.writer.execute(sql, (before,))
                    deleted = cursor.rowcount
                total += deleted
                if deleted < PRUNE_CHUNK:
                    break
            counts.append(total)
        return Pruned(*counts)


async def _insert_returning(
    conn: aiosqlite.Connection, sql: str, rows: list[tuple[Any, ...]], width: int
) -> set[Any]:
    found: set[Any] = set()
    for chunk in _chunks(rows, CHUNK):
        values = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
        result = await conn.execute_fetchall(sql.format(values), [v for row in chunk for v in row])
        found.update(r[0] for r in result)
    return found


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Roll back if a transaction is still open. SQLite ends some transactions by itself (a full
    disk, an I/O error): the original error is what the caller must see, not this one."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
