"""Schema migrations, one list for both SQL backends.

Each step is applied once, in order, and recorded in ``schema_migrations``.
Type names are filled in per backend: Postgres keeps money as ``NUMERIC``
(exact, summed by the database), SQLite as integer nanos (its only exact type).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "render"]

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE clients (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at {time} NOT NULL
            )""",
            """CREATE TABLE api_keys (
                prefix TEXT PRIMARY KEY,
                client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
                key_hash TEXT NOT NULL UNIQUE,
                created_at {time} NOT NULL,
                revoked_at {time}
            )""",
            "CREATE INDEX api_keys_client ON api_keys (client_id)",
            """CREATE TABLE budgets (
                client_id TEXT PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
                mode TEXT NOT NULL,
                token_limit {bigint},
                cost_limit {money},
                period TEXT NOT NULL,
                timezone TEXT NOT NULL,
                currency TEXT NOT NULL,
                pause_at_limit {bool} NOT NULL,
                alert_thresholds TEXT NOT NULL,
                period_start {time} NOT NULL,
                tokens_used {bigint} NOT NULL,
                cost_used {money} NOT NULL,
                paused {bool} NOT NULL,
                pause_reason TEXT,
                version {bigint} NOT NULL,
                updated_at {time} NOT NULL
            )""",
            # The ledger keeps events of deleted clients: no foreign key.
            """CREATE TABLE usage_events (
                request_id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                end_user TEXT,
                conversation TEXT,
                api_type TEXT NOT NULL,
                model TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                status INTEGER NOT NULL,
                input_tokens {bigint} NOT NULL,
                output_tokens {bigint} NOT NULL,
                cached_tokens {bigint} NOT NULL,
                reasoning_tokens {bigint} NOT NULL,
                characters {bigint} NOT NULL,
                audio_seconds {money} NOT NULL,
                images INTEGER NOT NULL,
                cost_usd {money} NOT NULL,
                cost {money} NOT NULL,
                currency TEXT NOT NULL,
                exchange_rate {money} NOT NULL,
                estimated {bool} NOT NULL,
                unpriced {bool} NOT NULL,
                created_at {time} NOT NULL
            )""",
            "CREATE INDEX usage_events_client_time ON usage_events (client_id, created_at)",
            "CREATE INDEX usage_events_time ON usage_events (created_at)",
        ],
    ),
]

MIGRATIONS.append(
    (
        2,
        [
            "ALTER TABLE budgets ADD COLUMN alerts_fired TEXT NOT NULL DEFAULT '[]'",
            # Budget events, written in the transaction that raised them and
            # delivered to the webhooks from here (a durable outbox).
            """CREATE TABLE alert_outbox (
                id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at {time} NOT NULL,
                next_attempt_at {time} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                pending_urls TEXT,
                delivered_at {time},
                last_error TEXT
            )""",
            "CREATE INDEX alert_outbox_due ON alert_outbox (delivered_at, next_attempt_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        3,
        [
            # Reservations held by the store itself, when the Redis gate is unreachable.
            """CREATE TABLE reservations (
                request_id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                tokens {bigint} NOT NULL,
                cost {money} NOT NULL,
                expires_at {time} NOT NULL,
                event TEXT NOT NULL
            )""",
            "CREATE INDEX reservations_client ON reservations (client_id)",
            "CREATE INDEX reservations_expiry ON reservations (expires_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        4,
        [
            # Dashboard sessions. The cookie holds a random id; only its hash is
            # kept, so a copy of the database opens no session. ``scope`` ties a
            # session to the admin token it logged in with: a new token ends them all.
            """CREATE TABLE dashboard_sessions (
                id_hash TEXT PRIMARY KEY,
                scope TEXT NOT NULL,
                created_at {time} NOT NULL,
                expires_at {time} NOT NULL
            )""",
            "CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        5,
        [
            # Events the store refused to record (a value it cannot hold), set
            # aside by the ledger writer instead of retried forever. ``payload``
            # is the event's JSON with every non-ASCII character escaped, so it
            # stores whatever the event carried; ``request_id`` and
            # ``client_id`` are printable copies. Nothing here is counted.
            """CREATE TABLE quarantined_events (
                request_id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                payload TEXT NOT NULL,
                error TEXT NOT NULL,
                created_at {time} NOT NULL
            )""",
        ],
    )
)

MIGRATIONS.append(
    (
        6,
        [
            # What decided each event's price, and where and how fast it ran.
            # ``tool_calls`` is a JSON object of counts by tool.
            "ALTER TABLE usage_events ADD COLUMN service_tier TEXT",
            "ALTER TABLE usage_events ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '{{}}'",
            "ALTER TABLE usage_events ADD COLUMN price_source TEXT",
            "ALTER TABLE usage_events ADD COLUMN upstream TEXT",
            "ALTER TABLE usage_events ADD COLUMN latency_ms INTEGER",
        ],
    )
)

MIGRATIONS.append(
    (
        7,
        [
            # What a client pays (section 6c): its currency (NULL: the server's),
            # its markup (NULL: 1) and the models it may call (a JSON list of
            # globs; NULL: all).
            "ALTER TABLE clients ADD COLUMN currency TEXT",
            "ALTER TABLE clients ADD COLUMN markup {money}",
            "ALTER TABLE clients ADD COLUMN models_allowed TEXT",
            # Each event keeps the markup it was charged with (NULL before
            # markups: 1) and its cost at list price, so margin is a sum.
            "ALTER TABLE usage_events ADD COLUMN markup {money}",
            "ALTER TABLE usage_events ADD COLUMN list_cost {money}",
            "UPDATE usage_events SET list_cost = cost",
            # Exchange rates are data with a history: the newest row of a
            # currency is in force.
            """CREATE TABLE exchange_rates (
                currency TEXT NOT NULL,
                since {time} NOT NULL,
                rate {money} NOT NULL,
                PRIMARY KEY (currency, since)
            )""",
            # Credits: each raises the cost limit of the period it was given in.
            "ALTER TABLE budgets ADD COLUMN credit {money} NOT NULL DEFAULT 0",
            """CREATE TABLE credits (
                id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
                amount {money} NOT NULL,
                note TEXT NOT NULL,
                created_at {time} NOT NULL,
                period_start {time} NOT NULL
            )""",
            "CREATE INDEX credits_client ON credits (client_id, created_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        8,
        [
            # Limits beside the budget (section 6b): a JSON list, as PUT
            # /admin/clients/{id}/limits takes it; NULL: none. Their counters
            # live in the gate; a lost one is counted again from the ledger.
            "ALTER TABLE clients ADD COLUMN limits TEXT",
            "CREATE INDEX usage_events_client_user_time ON usage_events (client_id, end_user, created_at)",
            # What a store-held reservation holds on each limit: [[counter key, amount], ...].
            "ALTER TABLE reservations ADD COLUMN holds TEXT",
        ],
    )
)

MIGRATIONS.append(
    (
        9,
        [
            # What each billing sink is owed: a row per (sink, event), written
            # in the transaction that records the event and deleted once the
            # sink has it (the durable outbox of exports).
            """CREATE TABLE export_outbox (
                sink TEXT NOT NULL,
                request_id TEXT NOT NULL,
                next_attempt_at {time} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                PRIMARY KEY (sink, request_id)
            )""",
            "CREATE INDEX export_outbox_due ON export_outbox (sink, next_attempt_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        10,
        [
            # Objects the upstream keeps, created through taximeter (section 4b):
            # every client shares the operator's key, so only this table says
            # whose a response, file or batch is.
            """CREATE TABLE upstream_objects (
                object_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
                upstream TEXT NOT NULL,
                created_at {time} NOT NULL,
                detail TEXT
            )""",
            "CREATE INDEX upstream_objects_client ON upstream_objects (client_id, kind, created_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        11,
        [
            # The batch a line of which an event is (section 4b): each line is its own event.
            "ALTER TABLE usage_events ADD COLUMN batch_id TEXT",
            # Objects that keep running upstream after their call (a batch, a
            # background response), each watched until it ends, with what its
            # admission reserved (JSON), released once it is charged.
            """CREATE TABLE watches (
                object_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
                upstream TEXT NOT NULL,
                reservation TEXT NOT NULL,
                next_check_at {time} NOT NULL,
                checks INTEGER NOT NULL DEFAULT 0,
                created_at {time} NOT NULL
            )""",
            "CREATE INDEX watches_due ON watches (next_check_at)",
        ],
    )
)

MIGRATIONS.append(
    (
        12,
        [
            # One process at a time looks at a watched object: until this
            # (NULL: none is); its next look stays when it is due.
            "ALTER TABLE watches ADD COLUMN lease_until {time}",
        ],
    )
)

MIGRATIONS.append(
    (
        13,
        [
            # The secret a client's portal links are signed with; a new one
            # revokes every link made before it.
            """CREATE TABLE portal_secrets (
                client_id TEXT PRIMARY KEY REFERENCES clients(id),
                secret TEXT NOT NULL,
                created_at {time} NOT NULL
            )""",
        ],
    )
)

DAILY_TOTALS = 14  # the migration that made the daily totals (and sums them from the events)
MIGRATIONS.append(
    (
        DAILY_TOTALS,
        [
            # The ledger summed per client, UTC day, model, api_type and
            # currency, and per client, UTC day, end user and currency, kept in
            # the transaction that records each event: reports and charts read
            # whole days here, not every event.
            """CREATE TABLE usage_daily (
                client_id TEXT NOT NULL,
                day TEXT NOT NULL,
                model TEXT NOT NULL,
                api_type TEXT NOT NULL,
                currency TEXT NOT NULL,
                requests {bigint} NOT NULL,
                input_tokens {bigint} NOT NULL,
                output_tokens {bigint} NOT NULL,
                cost_usd {money} NOT NULL,
                cost {money} NOT NULL,
                list_cost {money} NOT NULL,
                PRIMARY KEY (client_id, day, model, api_type, currency)
            )""",
            "CREATE INDEX usage_daily_day ON usage_daily (day)",
            """CREATE TABLE usage_daily_users (
                client_id TEXT NOT NULL,
                day TEXT NOT NULL,
                end_user TEXT NOT NULL,
                currency TEXT NOT NULL,
                requests {bigint} NOT NULL,
                input_tokens {bigint} NOT NULL,
                output_tokens {bigint} NOT NULL,
                cost_usd {money} NOT NULL,
                cost {money} NOT NULL,
                list_cost {money} NOT NULL,
                PRIMARY KEY (client_id, day, end_user, currency)
            )""",
            "CREATE INDEX usage_daily_users_day ON usage_daily_users (day)",
            "{lock_events}",  # no event recorded meanwhile is left out of the totals
            """INSERT INTO usage_daily SELECT client_id, {day_of}, model, api_type, currency,
                COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd), SUM(cost),
                SUM(COALESCE(list_cost, cost))
                FROM usage_events GROUP BY client_id, {day_of}, model, api_type, currency""",
            """INSERT INTO usage_daily_users SELECT client_id, {day_of}, COALESCE(end_user, ''), currency,
                COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd), SUM(cost),
                SUM(COALESCE(list_cost, cost))
                FROM usage_events GROUP BY client_id, {day_of}, COALESCE(end_user, ''), currency""",
        ],
    )
)

MIGRATIONS.append(
    (
        15,
        [
            # When each budget's period ends (a lifetime budget's: 9999-12-31),
            # so the sweeper reads only the budgets due to roll, not every budget
            # every tick. Set to the period's start here: each is read once, found
            # not yet due and given its real end. NULL: a row written by a release
            # older than this, read and given its end by the next sweep.
            "ALTER TABLE budgets ADD COLUMN next_reset {time}",
            "UPDATE budgets SET next_reset = period_start",
            "CREATE INDEX budgets_next_reset ON budgets (next_reset)",
        ],
    )
)

PARTITIONED = 16  # the migration that partitioned the Postgres ledger by month
MIGRATIONS.append(
    (
        PARTITIONED,
        [
            # Postgres: the ledger in one partition per UTC month (old months
            # are dropped whole, by the retention setting) and each request id
            # claimed once in event_ids, so recording stays idempotent across
            # partitions. SQLite keeps one table.
            "{partition_events}",
        ],
    )
)

LATEST = MIGRATIONS[-1][0]


def render(statement: str, types: dict[str, str]) -> str:
    """``statement`` with its ``{money}``, ``{time}``, ``{bool}``, ``{bigint}``, ``{day_of}``
    and ``{lock_events}`` filled in."""
    return statement.format(**types)
