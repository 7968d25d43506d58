"""The production store: PostgreSQL through an asyncpg pool.

The same tables and the same contract as the SQLite store (tests/test_store.py runs both): the
committer's batch is one transaction with a fixed handful of statements however many writes it
carries (rows passed as arrays and expanded with `unnest`), so a batch of 500 webhooks costs a
few round trips, not 500. Migrations are versioned and applied at start; a database that a newer
engine migrated is refused with one line. One engine per database (per schema): the engine holds
a session advisory lock for as long as it runs, so a second one, which would replay the same
outbox, stops at start.

Postgres text cannot hold NUL characters, which anyone can put in a webhook's JSON: they are
stored as U+FFFD rather than refusing the whole batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
    # 1: every table of SQLite's migrations 1 to 3, in Postgres types
    """
    CREATE TABLE dedupe (key TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
    CREATE INDEX dedupe_at ON dedupe (at);
    CREATE TABLE journal (
        seq BIGSERIAL PRIMARY KEY,
        contact TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX journal_at ON journal (at);
    CREATE INDEX journal_contact ON journal (contact, seq);
    CREATE TABLE aliases (
        number TEXT NOT NULL, alias TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (number, alias)
    );
    CREATE INDEX aliases_alias ON aliases (alias);
    CREATE TABLE conversations (
        key TEXT PRIMARY KEY,
        number TEXT NOT NULL,
        flow TEXT NOT NULL,
        state TEXT,
        handoff BOOLEAN NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_seq BIGINT NOT NULL,
        snapshot TEXT NOT NULL
    );
    CREATE INDEX conversations_updated ON conversations (updated_at);
    CREATE TABLE messages (
        n BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        contact TEXT NOT NULL,
        direction TEXT NOT NULL,
        number TEXT NOT NULL,
        type TEXT NOT NULL,
        text TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        provider_id TEXT,
        payload TEXT,
        error_code BIGINT,
        error_title TEXT
    );
    CREATE INDEX messages_contact ON messages (contact, n);
    CREATE INDEX messages_provider ON messages (provider_id);
    CREATE INDEX messages_outbox ON messages (n) WHERE status = 'pending';
    CREATE TABLE statuses (
        provider_id TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        error_code BIGINT,
        error_title TEXT,
        PRIMARY KEY (provider_id, status)
    );
    CREATE INDEX statuses_at ON statuses (at);
    CREATE TABLE raw_events (
        n BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX raw_events_at ON raw_events (at);
    CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at DOUBLE PRECISION NOT NULL);
    INSERT INTO heartbeat VALUES (1, 0);
    CREATE TABLE timers (
        contact TEXT NOT NULL,
        kind TEXT NOT NULL,
        due DOUBLE PRECISION NOT NULL,
        step BIGINT NOT NULL,
        rung INTEGER NOT NULL,
        PRIMARY KEY (contact, kind)
    );
    CREATE INDEX timers_due ON timers (due, contact, kind);
    """,
    # 2: when a send of an outbox row last left, so a restart knows what may have gone
    """
    ALTER TABLE messages ADD COLUMN sending_at DOUBLE PRECISION;
    """,
    # 3: documents that actions keep (orders, invoices)
    """
    CREATE TABLE records (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        contact TEXT NOT NULL,
        status TEXT NOT NULL,
        due DOUBLE PRECISION,
        at DOUBLE PRECISION NOT NULL,
        version BIGINT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX records_contact ON records (kind, contact, at);
    CREATE INDEX records_status ON records (kind, status, at);
    CREATE INDEX records_due ON records (kind, due) WHERE due IS NOT NULL;
    """,
]

SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
T = TypeVar("T")
HOLD_CHECK = 1.0  # seconds between checks that the advisory lock's session is alive
PRUNE_CHUNK = 5000  # rows one DELETE removes: pruning never holds the writer for long
TIMEOUT = 5.0  # seconds a statement may take before the store counts as unavailable

# Errors caused by what a write holds, not by the state of the database: retrying cannot help.
REJECTED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    UnicodeError,
    TypeError,
    OverflowError,
)

# The database is down, restarting or unreachable: the write may succeed later.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # shutting down, or cannot connect now
    asyncpg.InsufficientResourcesError,  # disk full, too many connections
)

APPLY_STATUSES = """
UPDATE messages SET
    status = best.status,
    rank = best.rank,
    error_code = COALESCE(best.error_code, messages.error_code),
    error_title = COALESCE(best.error_title, messages.error_title)
FROM (
    SELECT DISTINCT ON (s.provider_id) s.provider_id, s.status, s.rank, s.error_code,
        s.error_title
    FROM statuses s WHERE s.provider_id = ANY($1::text[])
    ORDER BY s.provider_id, s.rank DESC
) AS best
WHERE messages.provider_id = best.provider_id AND messages.direction = 'out'
  AND messages.rank < best.rank
"""


class PostgresStore:
    def __init__(self, dsn: str, *, schema: str = "public", pool_size: int = 10) -> None:
        if not SCHEMA.fullmatch(schema):
            raise ConfigError(f"Postgres schema {schema!r}: lower-case letters, digits and _")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.commits = 0
        self._pool: asyncpg.Pool | None = None
        self._held: asyncpg.Connection | None = None  # holds the advisory lock
        self._session: tuple[int, Any] | None = None  # its backend: pid and start time
        self._checked = 0.0  # when the lock's session was last seen alive (monotonic)
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """A DATABASE_URL; `?schema=NAME` keeps the engine's tables in that schema (default
        public), so that one database can hold several engines."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), "public")
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return cls(urlunsplit(parts._replace(query=rest)), schema=schema)

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        quiet_pool_errors()
        settings = {"search_path": self.schema, "application_name": "wa-engine"}
        try:
            self._held = await asyncpg.connect(self.dsn, timeout=TIMEOUT, server_settings=settings)
            await self._hold(self._held)
            await self._migrate(self._held)
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=TIMEOUT,
                command_timeout=TIMEOUT,
                server_settings=settings,
            )
            await self.ping()
        except BaseException as e:
            await self.close()
            if isinstance(e, OSError | asyncpg.PostgresError | TimeoutError):
                raise ConfigError(
                    f"DATABASE_URL: cannot reach {self.describe()}: {_said(e)}"
                ) from e
            raise

    def describe(self) -> str:
        """Where the store is, without the password."""
        parts = urlsplit(self.dsn)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        return f"postgres at {where}" + (
            f" (schema {self.schema})" if self.schema != "public" else ""
        )

    async def _hold(self, conn: asyncpg.Connection) -> None:
        """One engine per database and schema: a second would send every pending reply again."""
        key = int.from_bytes(hashlib.sha256(f"wa-engine:{self.schema}".encode()).digest()[:8])
        key -= 1 << 63 if key >= 1 << 63 else 0  # a signed 64-bit key
        row = await conn.fetchrow(
            "SELECT pg_try_advisory_lock($1), pid, backend_start FROM pg_stat_activity"
            " WHERE pid = pg_backend_pid()",
            key,
        )
        if row is None or not row[0]:
            raise ConfigError(
                f"DATABASE_URL: schema {self.schema!r} is in use by another engine;"
                " one engine per database schema"
            )
        self._session = (row[1], row[2])

    async def _take_back(self, conn: asyncpg.Connection) -> None:
        """Take the lock on a new session. Our own previous session may still hold it: after a
        stall, Postgres has not yet noticed that we dropped it (over a cut network, not until
        its TCP keepalive fails). That backend, and only that one (same pid, same start), is
        ended, and the lock taken again; another engine's lock is never touched."""
        try:
            await self._hold(conn)
            return
        except ConfigError:
            if self._session is None:
                raise
        ended = await conn.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid = $1 AND backend_start = $2",
            *self._session,
        )
        for _ in range(40):  # the backend exits, and its lock goes with it, within moments
            try:
                await self._hold(conn)
                return
            except ConfigError:
                if not ended:  # not ours (ours had gone by itself): another engine's
                    raise
            await asyncio.sleep(0.05)
        await self._hold(conn)

    async def _still_held(self) -> None:
        """The advisory lock lives with its session: a Postgres restart (or a terminated
        backend) ends it. Before writing, take it again on a new session; if another engine
        took it meanwhile, refuse to write (503s and a down store in /readyz) rather than
        share the outbox with it."""
        if self._held is not None and not self._held.is_closed():
            now = time.monotonic()
            if now - self._checked < HOLD_CHECK:
                return
            self._checked = now
            try:  # a session that died is only noticed when used
                await self._held.fetchval("SELECT 1", timeout=HOLD_CHECK)
                return
            except TimeoutError as e:  # Postgres is stalled: the write would be too
                self._held.terminate()
                raise StoreUnavailable("Postgres: TimeoutError: no answer") from e
            except Exception:  # any state of a dead session: start a new one
                self._held.terminate()  # gone: taken again on a new session below
        settings = {"search_path": self.schema, "application_name": "wa-engine"}
        try:
            conn = await asyncpg.connect(self.dsn, timeout=TIMEOUT, server_settings=settings)
        except UNAVAILABLE as e:
            raise StoreUnavailable(f"Postgres: {_said(e)}") from e
        except asyncpg.PostgresError as e:
            raise StoreUnavailable(f"Postgres: {_said(e)}") from e
        try:
            await self._take_back(conn)
        except ConfigError as e:
            await conn.close()
            raise StoreUnavailable(str(e).removeprefix("DATABASE_URL: ")) from None
        except BaseException:
            conn.terminate()
            raise
        self._held = conn

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"DATABASE_URL: the database has schema version {current}, newer than this"
                f" engine's {len(MIGRATIONS)}; upgrade the engine"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            async with conn.transaction():
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", version)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()
        held, self._held = self._held, None
        if held is not None:  # closing the session releases the advisory lock
            try:
                await asyncio.wait_for(held.close(), TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                held.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is closed")
        return self._pool

    async def ping(self) -> None:
        """Prove the store can write: rewrite the heartbeat row."""
        await self._run(lambda c: c.execute("UPDATE heartbeat SET at = at + 1 WHERE id = 1"))

    async def _run(self, fn: Any) -> Any:
        try:
            async with self.pool.acquire() as conn:
                try:
                    return await fn(conn)
                except TimeoutError:
                    # A stalled session: returning it to the pool would wait out one more
                    # timeout to reset it. Drop it; the pool opens a new one when needed.
                    conn.terminate()
                    raise
        except UNAVAILABLE as e:
            raise StoreUnavailable(f"Postgres: {_said(e)}") from e

    # --- writes --------------------------------------------------------------------------------

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        async with self._lock:
            results = await self._transaction(lambda conn: self._apply(conn, ops))
            self.commits += 1
            return results

    async def _transaction(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        keep: Callable[[T], bool] = lambda _result: True,
    ) -> T:
        """`work` in one transaction on a pooled session, committed when `keep(result)`, else
        rolled back; an error caused by what it writes is StoreRejected."""

        async def apply(conn: asyncpg.Connection) -> T:
            tx = conn.transaction()
            await tx.start()
            try:
                result = await work(conn)
            except TimeoutError:
                # Stalled: a ROLLBACK would wait out one more timeout. Dropping the session
                # rolls the transaction back on the server's side.
                conn.terminate()
                raise
            except BaseException:
                await tx.rollback()
                raise
            await (tx.commit() if keep(result) else tx.rollback())
            return result

        await self._still_held()
        try:
            result: T = await self._run(apply)
        except REJECTED as e:
            raise StoreRejected(f"{type(e).__name__}: {e}") from e
        return result

    async def _apply(self, conn: asyncpg.Connection, ops: Sequence[Op]) -> list[Accepted | None]:
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
                "UPDATE messages SET sending_at = $1 WHERE id = $2 AND status = 'pending'",
                [(op.at, _t(op.id)) for op in sending],
            )
        if delivered:
            await self._delivered(conn, delivered, touched)
        if touched:
            await conn.execute(APPLY_STATUSES, sorted(touched))
        return [results.get(id(op)) if isinstance(op, Accept) else None for op in ops]

    async def _accept(
        self, conn: asyncpg.Connection, accepts: list[Accept], touched: set[str]
    ) -> dict[int, Accepted]:
        entries = [(op, e) for op in accepts for e in op.journal]
        rows = await conn.fetch(
            "INSERT INTO dedupe (key, at) SELECT * FROM unnest($1::text[], $2::float8[])"
            " ON CONFLICT DO NOTHING RETURNING key",
            *_columns([(_t(e.event_id), e.at) for _op, e in entries], 2),
        )
        new_keys = {r[0] for r in rows}
        fresh: list[tuple[Accept, JournalEntry]] = []
        duplicates: dict[int, int] = {}
        for op, e in entries:
            if _t(e.event_id) in new_keys:
                new_keys.discard(_t(e.event_id))  # a second copy in the same batch: a duplicate
                fresh.append((op, e))
            else:
                duplicates[id(op)] = duplicates.get(id(op), 0) + 1
        seqs: dict[str, int] = {}
        if fresh:
            rows = await conn.fetch(
                "INSERT INTO journal (contact, event_id, event, at)"
                " SELECT c, e, ev, a FROM unnest($1::text[], $2::text[], $3::text[],"
                " $4::float8[]) WITH ORDINALITY AS t(c, e, ev, a, n) ORDER BY n"
                " RETURNING seq, event_id",
                *_columns(
                    [
                        (_t(e.contact), _t(e.event_id), json.dumps(e.event), e.at)
                        for _op, e in fresh
                    ],
                    4,
                ),
            )
            seqs = {event_id: seq for seq, event_id in rows}
        statuses = [(op, s) for op in accepts for s in op.statuses]
        new_statuses: set[tuple[str, str]] = set()
        if statuses:
            rows = await conn.fetch(
                "INSERT INTO statuses (provider_id, status, rank, at, error_code, error_title)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[],"
                " $5::bigint[], $6::text[]) ON CONFLICT DO NOTHING RETURNING provider_id, status",
                *_columns(
                    [
                        (
                            _t(s.provider_id),
                            _t(s.status),
                            s.rank,
                            s.at,
                            s.error_code,
                            _t(s.error_title),
                        )
                        for _op, s in statuses
                    ],
                    6,
                ),
            )
            new_statuses = {(r[0], r[1]) for r in rows}
        raw = [(_t(r.kind), json.dumps(r.payload), r.at) for op in accepts for r in op.raw]
        if raw:
            await conn.execute(
                "INSERT INTO raw_events (kind, payload, at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])",
                *_columns(raw, 3),
            )
        aliases = {
            (_t(a.number), _t(a.alias)): _t(a.key) for op in accepts for a in op.aliases
        }  # the last of one (number, alias) wins, as one statement may change a row only once
        if aliases:
            await conn.execute(
                "INSERT INTO aliases (number, alias, key)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
                " ON CONFLICT (number, alias) DO UPDATE SET key = excluded.key",
                *_columns([(n, a, k) for (n, a), k in aliases.items()], 3),
            )
        results = {}
        for op in accepts:
            mine = [(seqs[_t(e.event_id)], e) for o, e in fresh if o is op]
            seen: list[StatusWrite] = []
            dup_statuses = 0
            for o, s in statuses:
                if o is not op:
                    continue
                key = (_t(s.provider_id), _t(s.status))
                if key in new_statuses:
                    new_statuses.discard(key)
                    seen.append(s)
                    touched.add(_t(s.provider_id))
                else:
                    dup_statuses += 1
            results[id(op)] = Accepted(
                entries=sorted(mine, key=lambda x: x[0]),
                duplicate_messages=duplicates.get(id(op), 0),
                new_statuses=seen,
                duplicate_statuses=dup_statuses,
            )
        return results

    async def _commit(self, conn: asyncpg.Connection, commits: list[Commit]) -> None:
        latest = {op.conversation.key: op.conversation for op in commits}  # the last one wins
        await conn.execute(
            "INSERT INTO conversations"
            " (key, number, flow, state, handoff, updated_at, last_seq, snapshot)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[],"
            " $6::float8[], $7::bigint[], $8::text[])"
            " ON CONFLICT (key) DO UPDATE SET number = excluded.number, flow = excluded.flow,"
            " state = excluded.state, handoff = excluded.handoff,"
            " updated_at = excluded.updated_at, last_seq = excluded.last_seq,"
            " snapshot = excluded.snapshot",
            *_columns(
                [
                    (
                        _t(c.key),
                        _t(c.number),
                        _t(c.flow),
                        _t(c.state),
                        bool(c.handoff),
                        c.updated_at,
                        int(c.snapshot.get("last_seq") or 0),
                        json.dumps(c.snapshot),
                    )
                    for c in latest.values()
                ],
                8,
            ),
        )
        timers: dict[tuple[str, str], TimerWrite] = {}
        for op in commits:  # in order: the last write of a contact's timer is what stays
            for t in op.timers:
                timers[(_t(t.contact), t.kind)] = t
        cleared = [key for key, t in timers.items() if t.due is None]
        if cleared:
            await conn.execute(
                "DELETE FROM timers USING unnest($1::text[], $2::text[]) AS c(contact, kind)"
                " WHERE timers.contact = c.contact AND timers.kind = c.kind",
                *_columns(cleared, 2),
            )
        armed = [(c, k, t.due, t.step, t.rung) for (c, k), t in timers.items() if t.due is not None]
        if armed:
            await conn.execute(
                "INSERT INTO timers (contact, kind, due, step, rung)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::bigint[],"
                " $5::int[])"
                " ON CONFLICT (contact, kind) DO UPDATE SET due = excluded.due,"
                " step = excluded.step, rung = excluded.rung",
                *_columns(armed, 5),
            )
        rows = [m for op in commits for m in op.messages]
        if rows:
            await conn.execute(
                "INSERT INTO messages (id, contact, direction, number, type, text, status, rank,"
                " at, provider_id, payload, error_code, error_title)"
                " SELECT i, c, d, nu, ty, tx, st, r, a, p, pl, ec, et FROM unnest($1::text[],"
                " $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                " $8::int[], $9::float8[], $10::text[], $11::text[], $12::bigint[], $13::text[])"
                " WITH ORDINALITY AS t(i, c, d, nu, ty, tx, st, r, a, p, pl, ec, et, n)"
                " ORDER BY n ON CONFLICT (id) DO NOTHING",
                *_columns([_texts(message_values(m)) for m in rows], 13),
            )

    async def _delivered(
        self, conn: asyncpg.Connection, delivered: list[Delivered], touched: set[str]
    ) -> None:
        await conn.executemany(
            "UPDATE messages SET status = $1, rank = $2, provider_id = COALESCE($3, provider_id),"
            " error_code = $4, error_title = $5, type = COALESCE($7, type),"
            " text = COALESCE($8, text) WHERE id = $6 AND rank < $2",
            [
                (
                    d.status,
                    STATUS_RANK[d.status],
                    _t(d.provider_id),
                    d.error_code,
                    _t(d.error_title),
                    _t(d.id),
                    _t(d.type),
                    _t(d.text),
                )
                for d in delivered
            ],
        )
        touched.update(_t(d.provider_id) for d in delivered if d.provider_id)

    # --- reads ---------------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._run(lambda c: c.fetch(sql, *args))
        return rows

    async def aliases(self) -> list[Alias]:
        rows = await self._fetch("SELECT number, alias, key FROM aliases")
        return [Alias(*r) for r in rows]

    async def conversation(self, key: str) -> ConversationRow | None:
        rows = await self._fetch(
            "SELECT key, number, flow, state, handoff, updated_at, snapshot"
            " FROM conversations WHERE key = $1",
            _t(key),
        )
        return conversation(rows[0]) if rows else None

    async def unhandled(self, after: int = 0, limit: int = 0) -> list[tuple[int, str, JSON]]:
        rows = await self._fetch(
            "SELECT j.seq, j.contact, j.event FROM journal j"
            " LEFT JOIN conversations c ON c.key = j.contact"
            " WHERE j.seq > $1 AND j.seq > COALESCE(c.last_seq, 0) ORDER BY j.seq LIMIT $2",
            after,
            limit or None,
        )
        return [(seq, contact, json.loads(event)) for seq, contact, event in rows]

    async def outbox(self, after: int = 0, limit: int = 0) -> list[MessageRow]:
        rows = await self._fetch(
            f"SELECT n, sending_at, {MESSAGE_COLUMNS} FROM messages"
            " WHERE status = 'pending' AND n > $1 ORDER BY n LIMIT $2",
            after,
            limit or None,
        )
        return [message(list(r)[2:], r[0], r[1]) for r in rows]

    async def transcript(self, key: str, limit: int) -> list[MessageRow]:
        rows = await self._fetch(
            f"SELECT * FROM (SELECT n, {MESSAGE_COLUMNS} FROM messages WHERE contact = $1"
            " ORDER BY n DESC LIMIT $2) AS latest ORDER BY n",
            _t(key),
            limit,
        )
        return [message(list(r)[1:]) for r in rows]

    async def conversations(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[ConversationRow]:
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            args.append(_t(state))
            where.append(f"state = ${len(args)}")
        if handoff is not None:
            args.append(handoff)
            where.append(f"handoff = ${len(args)}")
        sql = "SELECT key, number, flow, state, handoff, updated_at, snapshot FROM conversations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit)
        sql += f" ORDER BY updated_at DESC LIMIT ${len(args)}"
        rows = await self._fetch(sql, *args)
        return [conversation(r) for r in rows]

    async def contacts(self, alias: str, number: str | None) -> list[str]:
        if number is None:
            rows = await self._fetch("SELECT key FROM aliases WHERE alias = $1", _t(alias))
        else:
            rows = await self._fetch(
                "SELECT key FROM aliases WHERE alias = $1 AND number = $2", _t(alias), _t(number)
            )
        return sorted({r[0] for r in rows})

    async def timers(self, after: tuple[float, str, str] | None, limit: int) -> list[TimerWrite]:
        if after is None:
            rows = await self._fetch(
                "SELECT contact, kind, due, step, rung FROM timers"
                " ORDER BY due, contact, kind LIMIT $1",
                limit,
            )
        else:
            rows = await self._fetch(
                "SELECT contact, kind, due, step, rung FROM timers"
                " WHERE (due, contact, kind) > ($1, $2, $3) ORDER BY due, contact, kind LIMIT $4",
                after[0],
                after[1],
                after[2],
                limit,
            )
        return [TimerWrite(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def record(self, kind: str, key: str) -> Record | None:
        rows = await self._fetch(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1 AND key = $2", _t(kind), _t(key)
        )
        return record(rows[0]) if rows else None

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        rows = await self._fetch(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1"
            " AND ($2::text IS NULL OR contact = $2) AND ($3::text IS NULL OR status = $3)"
            " ORDER BY at DESC, key LIMIT $4",
            _t(kind),
            _t(contact),
            _t(status),
            limit,
        )
        return [record(r) for r in rows]

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        rows = await self._fetch(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1 AND due IS NOT NULL"
            " AND due <= $2 ORDER BY due, key LIMIT $3",
            _t(kind),
            before,
            limit,
        )
        return [record(r) for r in rows]

    async def put_records(self, records: Sequence[Record]) -> bool:
        return await self._transaction(lambda conn: _put_records(conn, records), bool)

    async def prune(self, *, dedupe_before: float, journal_before: float) -> Pruned:
        """Old dedupe keys, statuses, raw events and handled journal entries, deleted in chunks
        of PRUNE_CHUNK rows so that no one DELETE holds the writer for long."""
        counts = []
        for table, where in (
            ("dedupe", "at < $1"),
            (
                "journal",
                "at < $1 AND seq <= COALESCE("
                "(SELECT last_seq FROM conversations c WHERE c.key = journal.contact), 0)",
            ),
            ("statuses", "at < $1"),
            ("raw_events", "at < $1"),
        ):
            before = journal_before if table == "journal" else dedupe_before
            total = 0
            while True:
                sql = (
                    f"DELETE FROM {table} WHERE ctid IN"
                    f" (SELECT ctid FROM {table} WHERE {where} LIMIT {PRUNE_CHUNK})"
                )
                # Not under the write lock: Postgres deletes beside the committer's inserts.
                status: str = await self._run(lambda c, s=sql, b=before: c.execute(s, b))
                deleted = int(status.rsplit(maxsplit=1)[-1])
                total += deleted
                if deleted < PRUNE_CHUNK:
                    break
            counts.append(total)
        return Pruned(*counts)


async def _put_records(conn: asyncpg.Connection, records: Sequence[Record]) -> bool:
    """Each record only if the stored one is still at its version (see Records.put_records)."""
    for r in records:
        values = (_t(r.contact), _t(r.status), r.due, r.at, r.version + 1, _t(record_data(r)))
        if r.version == 0:
            done = await conn.execute(
                "INSERT INTO records (contact, status, due, at, version, data, kind, key)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                *values,
                _t(r.kind),
                _t(r.key),
            )
        else:
            done = await conn.execute(
                "UPDATE records SET contact = $1, status = $2, due = $3, at = $4, version = $5,"
                " data = $6 WHERE kind = $7 AND key = $8 AND version = $9",
                *values,
                _t(r.kind),
                _t(r.key),
                r.version,
            )
        if not done.endswith(" 1"):
            return False
    return True


@overload
def _t(value: str) -> str: ...
@overload
def _t(value: None) -> None: ...
@overload
def _t(value: str | None) -> str | None: ...


def _t(value: str | None) -> str | None:
    """Text Postgres can hold: NUL characters (which JSON allows) become U+FFFD."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _texts(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_t(v) if isinstance(v, str) else v for v in values)


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for unnest($1::type[], ...)."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            columns[i].append(value)
    return columns


class QuietPoolErrors(logging.Filter):
    """asyncpg's pool logs each failed attempt to reconnect its idle connections with a
    traceback. While Postgres is down that is the outage, which the committer reports once, not
    a fault of ours: such a record becomes one line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(error, UNAVAILABLE):
            said = record.getMessage()
            record.msg, record.args = "%s (%s: %s)", (said, type(error).__name__, error)
            record.exc_info = record.exc_text = None
        return True


def quiet_pool_errors() -> None:
    """Install QuietPoolErrors on asyncpg's pool logger (once)."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, QuietPoolErrors) for f in pool_log.filters):
        pool_log.addFilter(QuietPoolErrors())


def _said(e: BaseException) -> str:
    """An error as a log line: a timeout's own message is empty."""
    if isinstance(e, TimeoutError) and not str(e):
        return f"TimeoutError: no answer within {TIMEOUT:g} s"
    return f"{type(e).__name__}: {e}"
