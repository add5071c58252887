"""Versioned schema migrations, one list per dialect.

Each migration is applied once, in order, inside the transaction that records
it in schema_migrations; a store opening an older database brings it up to date.
Times are integer microseconds since the epoch (UTC) in both dialects, so range
filters compare integers and nothing depends on a server's time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime


def apply(cur, migrations: list[list[str]]) -> int:
    """Brings the schema up to date through a cursor taking `?` placeholders,
    inside the caller's transaction (which holds the dialect's migration lock).
    Returns the schema version."""
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
    )
    cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    current = cur.fetchone()[0]
    if current > len(migrations):
        # a newer server migrated this store: what this one would write (e.g.
        # outbox events without the MAC the newer one checks) could be read
        # as forged and dropped; it stops instead
        raise RuntimeError(
            f"the store's schema is version {current}, newer than this server's"
            f" {len(migrations)}: run the newer hashsvc (stop every replica to upgrade)"
        )
    for version, statements in enumerate(migrations, start=1):
        if version <= current:
            continue
        for statement in statements:
            cur.execute(statement)
        cur.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (version, int(datetime.now(UTC).timestamp() * 1_000_000)),
        )
        current = version
    return current


SQLITE: list[list[str]] = [
    [
        """CREATE TABLE hash_sets (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{}',
            thresholds TEXT NOT NULL DEFAULT '{}',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL)""",
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            set_id INTEGER NOT NULL REFERENCES hash_sets(id),
            name TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            media_type TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            removed_at INTEGER)""",
        "CREATE UNIQUE INDEX entries_active_name ON entries (set_id, name)"
        " WHERE removed_at IS NULL",
        """CREATE TABLE entry_signals (
            entry_id INTEGER NOT NULL REFERENCES entries(id),
            variant_no INTEGER NOT NULL,
            kind TEXT NOT NULL,
            variant TEXT NOT NULL,
            value BLOB NOT NULL,
            quality INTEGER,
            PRIMARY KEY (entry_id, variant_no))""",
        "CREATE INDEX entry_signals_value ON entry_signals (kind, value)",
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            op TEXT NOT NULL,
            set_id INTEGER NOT NULL,
            entry_id INTEGER,
            at INTEGER NOT NULL)""",
        """CREATE TABLE tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            revoked_at INTEGER)""",
        """CREATE TABLE match_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL,
            time INTEGER NOT NULL,
            caller TEXT NOT NULL,
            rpc TEXT NOT NULL,
            media_type TEXT NOT NULL,
            decision TEXT NOT NULL,
            status TEXT NOT NULL,
            error_message TEXT NOT NULL DEFAULT '',
            client_ref TEXT NOT NULL DEFAULT '',
            media_bytes INTEGER NOT NULL DEFAULT 0,
            query_signals TEXT NOT NULL,
            matches TEXT NOT NULL)""",
        "CREATE INDEX match_history_time ON match_history (time)",
        "CREATE INDEX match_history_caller ON match_history (caller, id)",
        "CREATE INDEX match_history_decision ON match_history (decision, id)",
        """CREATE TABLE match_history_sets (
            history_id INTEGER NOT NULL REFERENCES match_history(id),
            set_id INTEGER NOT NULL,
            PRIMARY KEY (set_id, history_id))""",
        # The history is evidence: append-only, enforced by the database itself.
        """CREATE TRIGGER match_history_no_update BEFORE UPDATE ON match_history
            BEGIN SELECT RAISE(ABORT, 'match_history is append-only'); END""",
        """CREATE TRIGGER match_history_no_delete BEFORE DELETE ON match_history
            BEGIN SELECT RAISE(ABORT, 'match_history is append-only'); END""",
        """CREATE TRIGGER match_history_sets_no_update BEFORE UPDATE ON match_history_sets
            BEGIN SELECT RAISE(ABORT, 'match_history is append-only'); END""",
        """CREATE TRIGGER match_history_sets_no_delete BEFORE DELETE ON match_history_sets
            BEGIN SELECT RAISE(ABORT, 'match_history is append-only'); END""",
    ],
]

# 2: the history becomes a hash chain (each record's hash covers the previous
# one's), so an edited, inserted or deleted record shows (`history verify`).
# Records written before it have no hash and are reported as unchained.
_CHAIN = [
    "ALTER TABLE match_history ADD COLUMN prev_hash TEXT",
    "ALTER TABLE match_history ADD COLUMN record_hash TEXT",
]
SQLITE.append(_CHAIN)

POSTGRES: list[list[str]] = [
    [
        """CREATE TABLE hash_sets (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{}',
            thresholds TEXT NOT NULL DEFAULT '{}',
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)""",
        """CREATE TABLE entries (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            set_id BIGINT NOT NULL REFERENCES hash_sets(id),
            name TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            media_type TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            added_by TEXT NOT NULL DEFAULT '',
            removed_at BIGINT)""",
        "CREATE UNIQUE INDEX entries_active_name ON entries (set_id, name)"
        " WHERE removed_at IS NULL",
        """CREATE TABLE entry_signals (
            entry_id BIGINT NOT NULL REFERENCES entries(id),
            variant_no SMALLINT NOT NULL,
            kind TEXT NOT NULL,
            variant TEXT NOT NULL,
            value BYTEA NOT NULL,
            quality SMALLINT,
            PRIMARY KEY (entry_id, variant_no))""",
        "CREATE INDEX entry_signals_value ON entry_signals (kind, value)",
        """CREATE TABLE changes (
            seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            op TEXT NOT NULL,
            set_id BIGINT NOT NULL,
            entry_id BIGINT,
            at BIGINT NOT NULL)""",
        """CREATE TABLE tokens (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT)""",
        """CREATE TABLE match_history (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            request_id TEXT NOT NULL,
            time BIGINT NOT NULL,
            caller TEXT NOT NULL,
            rpc TEXT NOT NULL,
            media_type TEXT NOT NULL,
            decision TEXT NOT NULL,
            status TEXT NOT NULL,
            error_message TEXT NOT NULL DEFAULT '',
            client_ref TEXT NOT NULL DEFAULT '',
            media_bytes BIGINT NOT NULL DEFAULT 0,
            query_signals TEXT NOT NULL,
            matches TEXT NOT NULL)""",
        "CREATE INDEX match_history_time ON match_history (time)",
        "CREATE INDEX match_history_caller ON match_history (caller, id)",
        "CREATE INDEX match_history_decision ON match_history (decision, id)",
        """CREATE TABLE match_history_sets (
            history_id BIGINT NOT NULL REFERENCES match_history(id),
            set_id BIGINT NOT NULL,
            PRIMARY KEY (set_id, history_id))""",
        """CREATE FUNCTION hashsvc_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'match_history is append-only'; END $$""",
        """CREATE TRIGGER match_history_append_only BEFORE UPDATE OR DELETE ON match_history
            FOR EACH ROW EXECUTE FUNCTION hashsvc_append_only()""",
        """CREATE TRIGGER match_history_sets_append_only BEFORE UPDATE OR DELETE
            ON match_history_sets FOR EACH ROW EXECUTE FUNCTION hashsvc_append_only()""",
        """CREATE TRIGGER match_history_no_truncate BEFORE TRUNCATE ON match_history
            FOR EACH STATEMENT EXECUTE FUNCTION hashsvc_append_only()""",
    ],
]
POSTGRES.append(_CHAIN)

# 3: tokens can expire.
_TOKEN_EXPIRY = ["ALTER TABLE tokens ADD COLUMN expires_at BIGINT"]
SQLITE.append(_TOKEN_EXPIRY)
POSTGRES.append(_TOKEN_EXPIRY)

# 4: a history chain may be keyed (HMAC): which key signed each record.
_CHAIN_KEY = ["ALTER TABLE match_history ADD COLUMN chain_key_id TEXT"]
SQLITE.append(_CHAIN_KEY)
POSTGRES.append(_CHAIN_KEY)

# 5: video, audio and PDF entries. A signal records where in the media it was
# taken; an entry may hold thousands of signals (a video's frames), so variant
# numbers outgrow SMALLINT; and values may be long (an audio fingerprint is
# ~30 KB an hour), too long for a B-tree index row, so exact lookups go
# through the value's first 32 bytes (all exact hashes are <= 32 bytes).
SQLITE.append(
    [
        "ALTER TABLE entry_signals ADD COLUMN position REAL",
        "DROP INDEX entry_signals_value",
        "CREATE INDEX entry_signals_value ON entry_signals (kind, substr(value, 1, 32))",
    ]
)
POSTGRES.append(
    [
        "ALTER TABLE entry_signals ALTER COLUMN variant_no TYPE INTEGER",
        "ALTER TABLE entry_signals ADD COLUMN position DOUBLE PRECISION",
        "DROP INDEX entry_signals_value",
        "CREATE INDEX entry_signals_value ON entry_signals (kind, substr(value, 1, 32))",
    ]
)


# Review queue and feedback (issue 9): review items, remembered false
# positives, quarantined entries, set options (allow lists; BLOCK reviewed
# too), and a detail column so reviewers' and operators' actions are recorded
# in the same hash-chained history as matches.
def _review(serial: str, blob: str) -> list[str]:
    return [
        f"""CREATE TABLE review_items (
            id {serial},
            request_id TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            caller TEXT NOT NULL,
            media_type TEXT NOT NULL,
            client_ref TEXT NOT NULL,
            query_signals TEXT NOT NULL,
            matches TEXT NOT NULL,
            set_ids TEXT NOT NULL,
            labels TEXT NOT NULL,
            status TEXT NOT NULL,
            claimed_by TEXT,
            claim_expires_at BIGINT,
            resolved_by TEXT,
            resolved_at BIGINT,
            note TEXT,
            added_entry_id BIGINT)""",
        "CREATE INDEX review_items_status ON review_items (status, id)",
        f"""CREATE TABLE review_suppressions (
            id {serial},
            entry_id BIGINT NOT NULL,
            kind TEXT NOT NULL,
            value {blob} NOT NULL,
            review_id BIGINT NOT NULL,
            created_at BIGINT NOT NULL)""",
        "CREATE INDEX review_suppressions_entry ON review_suppressions (entry_id)",
        """CREATE TABLE entry_quarantine (
            entry_id BIGINT PRIMARY KEY,
            since BIGINT NOT NULL,
            reason TEXT NOT NULL)""",
        "ALTER TABLE hash_sets ADD COLUMN allow_list BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE hash_sets ADD COLUMN review_blocks BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE match_history ADD COLUMN detail TEXT",
    ]


SQLITE.append(_review("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"))
POSTGRES.append(_review("BIGSERIAL PRIMARY KEY", "BYTEA"))


# 7: the value index holds only exact signal types (issue 6). Perceptual
# values (PDQ, video, text simhash, audio) are found through the in-memory
# index, never by value in the store, yet each one cost a random page of this
# index on every bulk write (half the WAL of a PDQ load on SQLite). Exact
# lookups name their kind as a literal (see SQLStore.find_exact), which both
# planners match against this OR list; a new exact signal type needs a
# migration that adds it (tests/test_store.py checks there is none missing).
def _exact_value_index(kinds: tuple[str, ...]) -> list[str]:
    return [
        "DROP INDEX entry_signals_value",
        "CREATE INDEX entry_signals_value ON entry_signals (kind, substr(value, 1, 32)) WHERE "
        + " OR ".join(f"kind = '{kind}'" for kind in kinds),
    ]


# migration 7 as it was applied; the exchange migration below adds sha512
_EXACT_KINDS_7 = ("md5", "sha256", "text_sha256")
EXACT_KINDS = (*_EXACT_KINDS_7, "sha512")
SQLITE.append(_exact_value_index(_EXACT_KINDS_7))
POSTGRES.append(_exact_value_index(_EXACT_KINDS_7))


# 8: PostgreSQL checks no foreign keys on entries and their signals (issue 6).
# Its foreign keys are row triggers, a query and a row lock for every row: of
# a bulk write's time, more than half (COPY of PDQ rows: 31k -> 77k rows/s
# without them). Neither guards anything the code can do: sets and entries
# are never deleted (removal sets removed_at), an entry's signals are written
# in the transaction that creates it or reads it, and a set is looked up
# before its entries are written. SQLite's checks are an index probe each and
# stay (dropping them would rebuild both tables); its migration 8 is empty.
SQLITE.append([])
POSTGRES.append(
    [
        "ALTER TABLE entry_signals DROP CONSTRAINT IF EXISTS entry_signals_entry_id_fkey",
        "ALTER TABLE entries DROP CONSTRAINT IF EXISTS entries_set_id_fkey",
    ]
)


# 9: issue 16. Sets a reviewer may add confirmed uploads to (review_target;
# never an allow list), and the flood counter shared by all replicas: matches
# per entry per time bucket, added by each replica's periodic flush and
# deleted once older than the window. entry_quarantine now holds the open
# flood alerts (an entry is never downgraded; ReleaseEntry acknowledges).
def _flood(count_type: str) -> list[str]:
    return [
        "ALTER TABLE hash_sets ADD COLUMN review_target BOOLEAN NOT NULL DEFAULT FALSE",
        f"""CREATE TABLE flood_counts (
            entry_id BIGINT NOT NULL,
            bucket BIGINT NOT NULL,
            count {count_type} NOT NULL,
            PRIMARY KEY (entry_id, bucket))""",
        "CREATE INDEX flood_counts_bucket ON flood_counts (bucket)",
    ]


SQLITE.append(_flood("INTEGER"))
POSTGRES.append(_flood("BIGINT"))


# Issue 16 (items 6, 16): who did it, and a chain that covers it. Every
# history record names the caller's token id beside its name (two reviewers
# may once have shared a name: tokens made without --name were all named
# after their role), and records of chain format 2 hash the token id and the
# record's set ids too (the per-set index that `history --set` reads), so
# moving a record between sets shows; older records keep format 1. Token
# names become unique among unrevoked tokens: duplicates that exist are
# renamed NAME#ID (their secrets are unchanged), all but the oldest.
_HISTORY_IDENTITY = [
    "ALTER TABLE match_history ADD COLUMN caller_token_id BIGINT",
    "ALTER TABLE match_history ADD COLUMN chain_format INTEGER",
    "UPDATE tokens SET name = name || '#' || id WHERE revoked_at IS NULL AND id NOT IN"
    " (SELECT MIN(id) FROM tokens WHERE revoked_at IS NULL GROUP BY name)",
    "CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL",
    # verify reads each batch of 1,000 records' set ids by history id; the
    # primary key leads with set_id, so without this every batch scans the
    # table (quadratic: SQLite, 100k records, verify 1.38 s, 0.88 s with it)
    "CREATE INDEX match_history_sets_history ON match_history_sets (history_id)",
]
SQLITE.append(_HISTORY_IDENTITY)
POSTGRES.append(_HISTORY_IDENTITY)


# Issue 21 (the web console): its pages stay fast with a big history. The
# dashboard counts decisions per hour of the last week from the (time,
# decision) index alone, without reading the records; an auditor looks a
# record up by its request id.
_CONSOLE = [
    "CREATE INDEX match_history_time_decision ON match_history (time, decision)",
    "CREATE INDEX match_history_request ON match_history (request_id)",
]
SQLITE.append(_CONSOLE)
POSTGRES.append(_CONSOLE)


# Issue 21 follow-up: console sessions live in the store, so any replica
# serves any session (no sticky sessions). A row holds the SHA-256 of the
# session id (the cookie's secret is never stored: database access alone
# does not hand out live sessions), the token it was opened with (its record
# is read with the session, so a revoked token ends it at once), its CSRF
# token, when it ends (sign-in + session_max_seconds), when it was last used
# (idle sessions end) and a message for the next page. Expired rows are
# deleted at every sign-in, by the expiry and last-use indexes.
_CONSOLE_SESSIONS = [
    """CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY,
        token_id BIGINT NOT NULL,
        csrf TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        flash TEXT
    )""",
    "CREATE INDEX console_sessions_expires ON console_sessions (expires_at)",
    "CREATE INDEX console_sessions_seen ON console_sessions (seen_at)",
]
SQLITE.append(_CONSOLE_SESSIONS)
POSTGRES.append(_CONSOLE_SESSIONS)


# Issue 20 (notifications): the durable outbox, written in the transaction of
# each event's cause; `seq`, the event's public id, is given after the commit
# in the order rows became visible (hashdb/outbox_sql.py: ids from a sequence
# commit out of order, and a cursor past a late one would skip it). Each
# webhook endpoint's position (one row all replicas share; a lease says which
# replica delivers), and the events an endpoint never took within its retry
# time. `mac`: an HMAC under the history key, when there is one, so a row
# written by someone with database access alone is never sent as hashsvc's.
def _outbox(serial: str) -> list[str]:
    return [
        f"""CREATE TABLE event_outbox (
            id {serial},
            seq BIGINT UNIQUE,
            type TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            set_names TEXT NOT NULL,
            body TEXT NOT NULL,
            mac TEXT
        )""",
        "CREATE INDEX event_outbox_created ON event_outbox (created_at)",
        "CREATE INDEX event_outbox_unsequenced ON event_outbox (id) WHERE seq IS NULL",
        """CREATE TABLE webhook_endpoints (
            name TEXT PRIMARY KEY,
            delivered_through BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            first_failed_at BIGINT,
            next_attempt_at BIGINT,
            last_error TEXT NOT NULL DEFAULT '',
            lease_owner TEXT,
            lease_until BIGINT NOT NULL DEFAULT 0,
            updated_at BIGINT NOT NULL
        )""",
        """CREATE TABLE webhook_failures (
            endpoint TEXT NOT NULL,
            event_id BIGINT NOT NULL,
            failed_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            PRIMARY KEY (endpoint, event_id)
        )""",
        "CREATE INDEX webhook_failures_failed_at ON webhook_failures (failed_at)",
    ]


SQLITE.append(_outbox("INTEGER PRIMARY KEY AUTOINCREMENT"))
POSTGRES.append(_outbox("BIGSERIAL PRIMARY KEY"))


# Issue 20 (retro-hunt): runs of a retro-hunt and their checkpoint (the last
# history id scanned), so a run survives a restart; its hits, each reported
# once (unique per entry and original request); review items say where they
# come from (a Match, or a retro-hunt: then the original upload's request id
# is origin_request_id, and request_id, unique, names the hit); a set's own
# retro window (NULL: the server's retro_window; 0: no retro-hunt).
def _retro(serial: str) -> list[str]:
    return [
        f"""CREATE TABLE retro_runs (
            id {serial},
            trigger TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            set_id BIGINT,
            entry_ids TEXT NOT NULL,
            since BIGINT NOT NULL,
            last_history_id BIGINT NOT NULL,
            checkpoint BIGINT NOT NULL DEFAULT 0,
            scanned BIGINT NOT NULL DEFAULT 0,
            hits BIGINT NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT,
            lease_until BIGINT NOT NULL DEFAULT 0)""",
        "CREATE INDEX retro_runs_state ON retro_runs (state, id)",
        f"""CREATE TABLE retro_matches (
            id {serial},
            run_id BIGINT NOT NULL,
            entry_id BIGINT NOT NULL,
            request_id TEXT NOT NULL,
            history_id BIGINT NOT NULL,
            decision TEXT NOT NULL,
            review_item_id BIGINT,
            created_at BIGINT NOT NULL,
            UNIQUE (entry_id, request_id))""",
        "ALTER TABLE review_items ADD COLUMN source TEXT NOT NULL DEFAULT 'match'",
        "ALTER TABLE review_items ADD COLUMN origin_request_id TEXT",
        "ALTER TABLE hash_sets ADD COLUMN retro_window_seconds BIGINT",
    ]


SQLITE.append(_retro("INTEGER PRIMARY KEY AUTOINCREMENT"))
POSTGRES.append(_retro("BIGSERIAL PRIMARY KEY"))


# Issue 20: the query signals of old uploads can be pruned (`history prune`)
# without breaking the hash chain. Records of chain format 3 hash a SHA-256
# of their query signals instead of the signals themselves (the digest is
# stored beside them), so dropping the signals of a record leaves its hash
# and every link intact. The append-only triggers let exactly that update
# through: query_signals to '[]' with signals_pruned_at set, on a format-3
# record, every other column unchanged; everything else is still refused.
_HISTORY_COLUMNS_FIXED = (
    "id, request_id, time, caller, rpc, media_type, decision, status, error_message,"
    " client_ref, media_bytes, matches, prev_hash, record_hash, chain_key_id, detail,"
    " caller_token_id, chain_format, query_signals_sha256"
)


def _prune_allowed(dialect: str) -> str:
    same = (
        " AND ".join(
            f"NEW.{c.strip()} IS OLD.{c.strip()}" for c in _HISTORY_COLUMNS_FIXED.split(",")
        )
        if dialect == "sqlite"
        else "ROW("
        + ", ".join(f"NEW.{c.strip()}" for c in _HISTORY_COLUMNS_FIXED.split(","))
        + ") IS NOT DISTINCT FROM ROW("
        + ", ".join(f"OLD.{c.strip()}" for c in _HISTORY_COLUMNS_FIXED.split(","))
        + ")"
    )
    return (
        f"OLD.chain_format = 3 AND OLD.signals_pruned_at IS NULL AND NEW.query_signals = '[]'"
        f" AND NEW.signals_pruned_at IS NOT NULL AND {same}"
    )


SQLITE.append(
    [
        "ALTER TABLE match_history ADD COLUMN query_signals_sha256 TEXT",
        "ALTER TABLE match_history ADD COLUMN signals_pruned_at BIGINT",
        "DROP TRIGGER match_history_no_update",
        f"""CREATE TRIGGER match_history_no_update BEFORE UPDATE ON match_history
            WHEN NOT ({_prune_allowed("sqlite")})
            BEGIN SELECT RAISE(ABORT, 'match_history is append-only'); END""",
    ]
)
POSTGRES.append(
    [
        "ALTER TABLE match_history ADD COLUMN query_signals_sha256 TEXT",
        "ALTER TABLE match_history ADD COLUMN signals_pruned_at BIGINT",
        "DROP TRIGGER match_history_append_only ON match_history",
        """CREATE TRIGGER match_history_no_delete BEFORE DELETE ON match_history
            FOR EACH ROW EXECUTE FUNCTION hashsvc_append_only()""",
        f"""CREATE FUNCTION hashsvc_history_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF {_prune_allowed("postgres")} THEN RETURN NEW; END IF;
              RAISE EXCEPTION 'match_history is append-only';
            END $$""",
        """CREATE TRIGGER match_history_no_update BEFORE UPDATE ON match_history
            FOR EACH ROW EXECUTE FUNCTION hashsvc_history_prune_only()""",
    ]
)


# Issue 22: partner feeds (hashsvc/exchange). A feed loads one set from one
# exchange API, incrementally from its checkpoint (the API's own, as JSON).
# Its credentials live in their own table that no listing reads, so no answer,
# log or history record can carry them. exchange_items maps each source item
# (the API's signal type and value) to the entry written for it: deletions,
# relabels and a snapshot's missing hashes find their entry there, and
# feedback its source id. The lease (lease_owner, lease_until) lets one replica
# fetch a feed at a time. exchange_feedback is the durable queue of verdicts
# sent back to the source. SHA-512 (TCAP) joins the exact types looked up by
# value.
def _exchange(id_type: str, blob: str) -> list[str]:
    return [
        *_exact_value_index(EXACT_KINDS),
        f"""CREATE TABLE exchange_feeds (
            id {id_type},
            name TEXT NOT NULL UNIQUE,
            api TEXT NOT NULL,
            set_id BIGINT NOT NULL,
            labels TEXT NOT NULL,
            options TEXT NOT NULL,
            every_seconds BIGINT NOT NULL,
            enabled BOOLEAN NOT NULL,
            checkpoint TEXT,
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL,
            last_fetch_at BIGINT,
            last_result TEXT NOT NULL DEFAULT '',
            last_error TEXT NOT NULL DEFAULT '',
            added BIGINT NOT NULL DEFAULT 0,
            updated BIGINT NOT NULL DEFAULT 0,
            deleted BIGINT NOT NULL DEFAULT 0,
            skipped BIGINT NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            next_run_at BIGINT NOT NULL,
            lease_owner TEXT,
            lease_until BIGINT)""",
        f"""CREATE TABLE exchange_credentials (
            feed_id BIGINT PRIMARY KEY,
            secret {blob} NOT NULL)""",
        """CREATE TABLE exchange_items (
            feed_id BIGINT NOT NULL,
            item_key TEXT NOT NULL,
            entry_name TEXT NOT NULL,
            source_id TEXT NOT NULL,
            PRIMARY KEY (feed_id, item_key))""",
        f"""CREATE TABLE exchange_feedback (
            id {id_type},
            feed_id BIGINT NOT NULL,
            entry_name TEXT NOT NULL,
            verdict TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at BIGINT NOT NULL,
            created_by TEXT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            sent_at BIGINT)""",
        "CREATE INDEX exchange_feedback_due ON exchange_feedback (state, next_attempt_at)",
        "CREATE INDEX exchange_feedback_entry ON exchange_feedback (feed_id, entry_name)",
    ]


SQLITE.append(_exchange("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"))
POSTGRES.append(_exchange("BIGSERIAL PRIMARY KEY", "BYTEA"))


# Retro-hunt durability (review of issues 20/22). retro_pending: a bulk
# load's or a feed fetch's retro-hunt, written before its first entry and
# cleared once its runs are queued, so a server killed in between queues
# them when it starts again (uploads let through stay found, not allowed).
# retro_matches.history_recorded: a hit is committed before its record in
# the hash-chained history is written; until that record is in, the run
# that made the hit (resumed after a crash) writes it. Hits made before this
# migration are taken as recorded (their runs are finished).
def _retro_durable(serial: str) -> list[str]:
    return [
        f"""CREATE TABLE retro_pending (
            id {serial},
            set_id BIGINT NOT NULL,
            since BIGINT NOT NULL,
            trigger TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            created_at BIGINT NOT NULL)""",
        "ALTER TABLE retro_matches ADD COLUMN history_recorded BOOLEAN NOT NULL DEFAULT FALSE",
        "UPDATE retro_matches SET history_recorded = TRUE",
    ]


SQLITE.append(_retro_durable("INTEGER PRIMARY KEY AUTOINCREMENT"))
POSTGRES.append(_retro_durable("BIGSERIAL PRIMARY KEY"))


# Issue 20 (Scale): a retro-hunt run on an engine (retro_engine = "dask") is
# cut into partitions, each a range of history ids cut at time boundaries.
# A partition done is written down with its count, after its hits are in:
# a coordinator that restarts skips those and resubmits the others.
def _retro_partitions() -> list[str]:
    return [
        """CREATE TABLE retro_partitions (
            run_id BIGINT NOT NULL,
            number INTEGER NOT NULL,
            after_id BIGINT NOT NULL,
            upto_id BIGINT NOT NULL,
            done BOOLEAN NOT NULL DEFAULT FALSE,
            scanned BIGINT NOT NULL DEFAULT 0,
            hits BIGINT NOT NULL DEFAULT 0,
            finished_at BIGINT,
            PRIMARY KEY (run_id, number))""",
    ]


SQLITE.append(_retro_partitions())
POSTGRES.append(_retro_partitions())


# Retro-hunts of AddEntry and confirmed reviews made durable (hardening):
# retro_pending.entry_ids (JSON; NULL: the set's entries changed since
# `since`) is written in the entry's own transaction; held_until (NULL:
# nobody) keeps a pending hunt to the process that wrote it while that
# process lives, after which any replica queues it.
_RETRO_PENDING_HELD = [
    "ALTER TABLE retro_pending ADD COLUMN entry_ids TEXT",
    "ALTER TABLE retro_pending ADD COLUMN held_until BIGINT",
]
SQLITE.append(list(_RETRO_PENDING_HELD))
POSTGRES.append(list(_RETRO_PENDING_HELD))


# Feeds hardened (issue 22): exchange_feeds.rejected counts the rows a feed
# sent that were refused (never mapped as loaded); exchange_deletions keeps
# each fetch's applied deletions for the rolling window of
# exchange.delete_window_seconds (a feed deleting just under the limit at
# every fetch emptied its set in a few fetches), with the feed's items
# before them (`held`): the window's budget is a share of the feed's size
# when its deleting began. exchange_feeds.items counts the feed's mapped
# items, kept with the mapping (a COUNT of a million items at every read of
# the feed took a second and more of each fetch).
_EXCHANGE_HARDENED = [
    "ALTER TABLE exchange_feeds ADD COLUMN rejected BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE exchange_feeds ADD COLUMN items BIGINT NOT NULL DEFAULT 0",
    "UPDATE exchange_feeds SET items ="
    " (SELECT COUNT(*) FROM exchange_items i WHERE i.feed_id = exchange_feeds.id)",
    """CREATE TABLE exchange_deletions (
        feed_id BIGINT NOT NULL,
        at BIGINT NOT NULL,
        deleted BIGINT NOT NULL,
        held BIGINT NOT NULL)""",
    "CREATE INDEX exchange_deletions_feed ON exchange_deletions (feed_id, at)",
]
SQLITE.append(list(_EXCHANGE_HARDENED))
POSTGRES.append(list(_EXCHANGE_HARDENED))

# Hardening: the outbox MAC covers the event's place too. A row's `mac`
# (mac_format 2) covers its row id beside its fields, and `seq_mac` its seq,
# id and mac, given when the seq is (at the insert on SQLite, by the
# sequencer on PostgreSQL): a row copied (a new id), moved to another seq or
# swapped with another no longer verifies. Rows written before (mac_format 1,
# ids up to event_outbox_legacy.through_id) keep verifying the old way; the
# watermark is signed under the history key by the first server that opens
# the store with it (hashdb/outbox_sql.py sign_outbox_legacy).
_OUTBOX_PLACE = [
    "ALTER TABLE event_outbox ADD COLUMN seq_mac TEXT",
    "ALTER TABLE event_outbox ADD COLUMN mac_format INTEGER NOT NULL DEFAULT 1",
    "CREATE TABLE event_outbox_legacy (through_id BIGINT NOT NULL, mac TEXT)",
    "INSERT INTO event_outbox_legacy (through_id) SELECT COALESCE(MAX(id), 0) FROM event_outbox",
]
SQLITE.append(list(_OUTBOX_PLACE))
POSTGRES.append(list(_OUTBOX_PLACE))

# Issue 20 (Scale): each allowed upload's PDQ views packed in a table of
# their own (views: n x 32 bytes, in the order of its query signals), which
# is all a PDQ retro-hunt reads: ~600 bytes a record in a narrow table,
# instead of the ~3 KB history row (one page each) and decoding its JSON
# hex; 10M uploads are ~6 GB to read, not ~30 GB (hashdb/history_sql.py
# pack_pdq_views). The store itself adds the row of every allowed upload as
# the record is inserted (views NULL), and the writer fills in the views in
# the same transaction: a record without views (written before this table,
# by an older server, or not packable) is read from its text, never
# skipped. The views are derived from the signals the chain covers;
# `history verify` checks them and the rows' presence and time. Append-only
# but for filling a NULL once, and a prune emptying them.
_MATCH_RPCS_SQL = "('Match', 'MatchUpload', 'MatchBatch')"
_VIEWS_UPDATE_ALLOWED = (
    "NEW.history_id = OLD.history_id AND NEW.time = OLD.time AND ("
    "(OLD.views IS NULL AND NEW.views IS NOT NULL AND {not_pruned})"
    " OR (NEW.views IS NULL AND NOT {not_pruned}))"
)
_NOT_PRUNED = (
    "EXISTS (SELECT 1 FROM match_history WHERE id = OLD.history_id AND signals_pruned_at IS NULL)"
)
_VIEWS_BACKFILL = (
    "INSERT INTO match_history_views (history_id, time, views) SELECT id, time, NULL"
    f" FROM match_history WHERE rpc IN {_MATCH_RPCS_SQL} AND decision = 'allow'"
)
_HISTORY_VIEWS_SQLITE = [
    """CREATE TABLE match_history_views (
            history_id INTEGER PRIMARY KEY,
            time BIGINT NOT NULL,
            views BLOB)""",
    _VIEWS_BACKFILL,
    f"""CREATE TRIGGER match_history_views_of_uploads AFTER INSERT ON match_history
            WHEN NEW.rpc IN {_MATCH_RPCS_SQL} AND NEW.decision = 'allow'
            BEGIN INSERT INTO match_history_views (history_id, time) VALUES (NEW.id, NEW.time);
            END""",
    """CREATE TRIGGER match_history_views_no_delete BEFORE DELETE ON match_history_views
            BEGIN SELECT RAISE(ABORT, 'match_history_views is append-only'); END""",
    f"""CREATE TRIGGER match_history_views_no_update BEFORE UPDATE ON match_history_views
            WHEN NOT ({_VIEWS_UPDATE_ALLOWED.format(not_pruned=_NOT_PRUNED)})
            BEGIN SELECT RAISE(ABORT, 'match_history_views is append-only'); END""",
]
_HISTORY_VIEWS_POSTGRES = [
    # no Match record may commit between the backfill's snapshot and the
    # trigger (it would get no views row, and no PDQ retro-hunt would read
    # it): other replicas' inserts wait until this migration commits
    "LOCK TABLE match_history IN SHARE ROW EXCLUSIVE MODE",
    """CREATE TABLE match_history_views (
            history_id BIGINT PRIMARY KEY,
            time BIGINT NOT NULL,
            views BYTEA)""",
    _VIEWS_BACKFILL,
    f"""CREATE FUNCTION hashsvc_history_views_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.rpc IN {_MATCH_RPCS_SQL} AND NEW.decision = 'allow' THEN
                INSERT INTO match_history_views (history_id, time) VALUES (NEW.id, NEW.time);
              END IF;
              RETURN NULL;
            END $$""",
    """CREATE TRIGGER match_history_views_of_uploads AFTER INSERT ON match_history
            FOR EACH ROW EXECUTE FUNCTION hashsvc_history_views_row()""",
    f"""CREATE FUNCTION hashsvc_history_views_fill_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'UPDATE' AND {_VIEWS_UPDATE_ALLOWED.format(not_pruned=_NOT_PRUNED)}
              THEN RETURN NEW; END IF;
              RAISE EXCEPTION 'match_history_views is append-only';
            END $$""",
    """CREATE TRIGGER match_history_views_append_only BEFORE UPDATE OR DELETE
            ON match_history_views
            FOR EACH ROW EXECUTE FUNCTION hashsvc_history_views_fill_only()""",
    """CREATE TRIGGER match_history_views_no_truncate BEFORE TRUNCATE ON match_history_views
            FOR EACH STATEMENT EXECUTE FUNCTION hashsvc_append_only()""",
]
SQLITE.append(_HISTORY_VIEWS_SQLITE)
POSTGRES.append(_HISTORY_VIEWS_POSTGRES)


# A retro-hunt run's failed attempts kept with the run (hashsvc/core/retro.py):
# counted in each server's memory, a run another replica claimed started its
# count again there, so a run failing every step could go round the replicas
# forever instead of failing at retro_max_attempts.
_RETRO_ATTEMPTS = [
    "ALTER TABLE retro_runs ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0",
]
SQLITE.append(list(_RETRO_ATTEMPTS))
POSTGRES.append(list(_RETRO_ATTEMPTS))

# A retro-hunt run's lease owner (hashdb/retro_sql.py claim_retro_run): a
# token each claim draws, which every write of the run's scanning server
# (progress, retry, release, finish, its hits and their history records)
# must still match. A server whose lease expired while it was stalled could
# otherwise move the checkpoint of the server that took the run over, or
# reschedule or finish it under it (review finding).
_RETRO_LEASE_OWNER = [
    "ALTER TABLE retro_runs ADD COLUMN lease_owner TEXT",
]
SQLITE.append(list(_RETRO_LEASE_OWNER))
POSTGRES.append(list(_RETRO_LEASE_OWNER))

# Issue 20 (Scale): beside an allowed upload's packed PDQ views, what a hunt
# needs of its other signals (hashdb/history_sql.py pack_other_signals: the
# md5, sha256 and other exact values, and which perceptual kinds it holds),
# so a run of pictures added by AddEntry (PDQ, md5, sha256, local features)
# reads the narrow views table as a PDQ-only run does instead of parsing
# every record's JSON. NULL: not packed (rows written before, or whose views
# are not): the hunt reads the text. Filled once with the views, emptied
# with them by a prune; `history verify` checks it against the record.
_OTHERS_UPDATE_ALLOWED = (
    "NEW.history_id = OLD.history_id AND NEW.time = OLD.time AND ("
    "(OLD.views IS NULL AND NEW.views IS NOT NULL AND OLD.others IS NULL AND {not_pruned})"
    " OR (NEW.views IS NULL AND NEW.others IS NULL AND NOT {not_pruned}))"
)
SQLITE.append(
    [
        "ALTER TABLE match_history_views ADD COLUMN others BLOB",
        "DROP TRIGGER match_history_views_no_update",
        f"""CREATE TRIGGER match_history_views_no_update BEFORE UPDATE ON match_history_views
            WHEN NOT ({_OTHERS_UPDATE_ALLOWED.format(not_pruned=_NOT_PRUNED)})
            BEGIN SELECT RAISE(ABORT, 'match_history_views is append-only'); END""",
    ]
)
POSTGRES.append(
    [
        "ALTER TABLE match_history_views ADD COLUMN others BYTEA",
        f"""CREATE OR REPLACE FUNCTION hashsvc_history_views_fill_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'UPDATE' AND {_OTHERS_UPDATE_ALLOWED.format(not_pruned=_NOT_PRUNED)}
              THEN RETURN NEW; END IF;
              RAISE EXCEPTION 'match_history_views is append-only';
            END $$""",
    ]
)


# A run's hits committed without their history record (retro_matches
# history_recorded false), looked up at every claim and finish of a run
# (hashsvc/core/retro.py record_unrecorded_hits): few, so a partial index.
_UNRECORDED_INDEX = (
    "CREATE INDEX retro_matches_unrecorded ON retro_matches (run_id) WHERE history_recorded = FALSE"
)
SQLITE.append([_UNRECORDED_INDEX])
POSTGRES.append([_UNRECORDED_INDEX])


# Labelled rows at bulk speed (issue 22): entries' labels interned. Each
# distinct label set is stored once in label_sets and an entry holds its id
# (label_set_id); a feed's source id, different on every entry, is kept in
# entries.source_id (NULL: none), so a feed's entries share a few hundred
# sets instead of carrying a label text each (hashdb/label_sets.py). The
# entries there keep their whole text as their set (source ids inside it):
# they read back the same. PostgreSQL indexes a set by its text's digest
# (a text may be longer than a B-tree key).
def _label_sets(serial: str, text_key: str, set_of_entry: str) -> list[str]:
    return [
        f"CREATE TABLE label_sets (id {serial}, labels TEXT NOT NULL)",
        f"CREATE UNIQUE INDEX label_sets_labels ON label_sets ({text_key.format('labels')})",
        "INSERT INTO label_sets (labels) SELECT DISTINCT labels FROM entries",
        "ALTER TABLE entries ADD COLUMN label_set_id BIGINT",
        "ALTER TABLE entries ADD COLUMN source_id TEXT",
        set_of_entry,
        "ALTER TABLE entries DROP COLUMN labels",
    ]


# the digest PostgreSQL indexes label sets by (hashdb/postgres.py looks them
# up by it): SHA-256 of the text's UTF-8 (convert_to is only STABLE, for
# any encoding; to UTF-8 it is immutable)
POSTGRES_LABEL_KEY = "hashsvc_label_key({})"
_POSTGRES_LABEL_KEY_FUNCTION = (
    "CREATE FUNCTION hashsvc_label_key(labels TEXT) RETURNS BYTEA LANGUAGE sql IMMUTABLE"
    " STRICT AS $$ SELECT sha256(convert_to(labels, 'UTF8')) $$"
)
SQLITE.append(
    _label_sets(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "{}",
        "UPDATE entries SET label_set_id ="
        " (SELECT l.id FROM label_sets l WHERE l.labels = entries.labels)",
    )
)
POSTGRES.append(
    [_POSTGRES_LABEL_KEY_FUNCTION]
    + _label_sets(
        "BIGSERIAL PRIMARY KEY",
        POSTGRES_LABEL_KEY,
        "UPDATE entries e SET label_set_id = l.id FROM label_sets l"
        f" WHERE {POSTGRES_LABEL_KEY.format('l.labels')} = {POSTGRES_LABEL_KEY.format('e.labels')}"
        " AND l.labels = e.labels",
    )
)
