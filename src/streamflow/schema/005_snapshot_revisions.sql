-- Snapshots and labels become revisions: every ingestion of a month writes its rows into fresh tables
-- of the schema "revisions" (one per file: <parent>_<yyyy_mm_dd>_r<N>), loaded without indexes, keyed
-- once, then attached as that month's partition of the parent table, all in one transaction.
-- Re-ingesting a month with different content detaches the previous revision instead of deleting
-- it: it stays readable (revisions.*), and snapshot_revisions says which revision each month serves.
-- Each revision table carries CHECK (as_of = ..., as_of_ts = ...): ATTACH then skips its validation
-- scan, and the planner skips other months' partitions for filters on either column.
--
-- The raw tables (the latest export of every user) become views over the snapshots, so a month is
-- written once, not twice. Existing data is moved over as revision 1 of each month.

CREATE SCHEMA revisions;

ALTER TABLE ingestion_log ADD COLUMN revision integer;
ALTER TABLE ingestion_log DROP CONSTRAINT ingestion_log_status_check;
-- unchanged: the same files again, nothing written; failed: refused, in its own transaction.
ALTER TABLE ingestion_log
    ADD CONSTRAINT ingestion_log_status_check CHECK (status IN ('succeeded', 'unchanged', 'failed'));

CREATE TABLE snapshot_revisions (
    as_of          date NOT NULL,
    revision       integer NOT NULL CHECK (revision >= 1),
    ingestion_id   bigint NOT NULL REFERENCES ingestion_log (id),
    file_hashes    jsonb NOT NULL,
    row_counts     jsonb NOT NULL,
    created_at     timestamptz NOT NULL,
    superseded_at  timestamptz,            -- NULL: the revision the month serves
    PRIMARY KEY (as_of, revision)
);
CREATE UNIQUE INDEX snapshot_revisions_current ON snapshot_revisions (as_of) WHERE superseded_at IS NULL;

ALTER TABLE users RENAME TO users_legacy;
ALTER TABLE subscriptions RENAME TO subscriptions_legacy;
ALTER TABLE usage_agg_30d RENAME TO usage_agg_30d_legacy;
ALTER TABLE payments_agg_90d RENAME TO payments_agg_90d_legacy;
ALTER TABLE support_agg_90d RENAME TO support_agg_90d_legacy;
ALTER TABLE user_snapshots RENAME TO user_snapshots_legacy;
ALTER TABLE subscription_snapshots RENAME TO subscription_snapshots_legacy;
ALTER TABLE usage_snapshots RENAME TO usage_snapshots_legacy;
ALTER TABLE payments_snapshots RENAME TO payments_snapshots_legacy;
ALTER TABLE support_snapshots RENAME TO support_snapshots_legacy;
ALTER TABLE labels RENAME TO labels_legacy;

-- Columns after the four keys are in the export contract's order (data/contracts.py; a test checks it).
-- user_id sorts bytewise (COLLATE "C"): ids are ASCII, and keying a million rows takes half the time
-- of a locale collation (no abbreviated keys there).
CREATE TABLE user_snapshots (
    user_id         text COLLATE "C" NOT NULL,
    as_of           date NOT NULL,
    as_of_ts        timestamptz NOT NULL,   -- as_of at 00:00 UTC: the event time Feast reads
    revision        integer NOT NULL,
    signup_date     date NOT NULL,
    user_gender     text NOT NULL,
    user_is_senior  boolean NOT NULL,
    has_family      boolean NOT NULL,
    has_dependents  boolean NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

CREATE TABLE subscription_snapshots (
    user_id             text COLLATE "C" NOT NULL,
    as_of               date NOT NULL,
    as_of_ts            timestamptz NOT NULL,
    revision            integer NOT NULL,
    months_active       integer NOT NULL,
    plan_stream_tv      boolean,
    plan_stream_movies  boolean,
    contract_type       text NOT NULL,
    paperless_billing   boolean NOT NULL,
    monthly_fee         numeric(12, 2) NOT NULL,
    total_paid          numeric(14, 2) NOT NULL,
    net_service         text NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

CREATE TABLE usage_snapshots (
    user_id              text COLLATE "C" NOT NULL,
    as_of                date NOT NULL,
    as_of_ts             timestamptz NOT NULL,
    revision             integer NOT NULL,
    watch_hours_30d      double precision NOT NULL,
    avg_session_mins_7d  double precision NOT NULL,
    unique_devices_30d   integer NOT NULL,
    skips_7d             integer NOT NULL,
    rebuffer_events_7d   integer NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

CREATE TABLE payments_snapshots (
    user_id              text COLLATE "C" NOT NULL,
    as_of                date NOT NULL,
    as_of_ts             timestamptz NOT NULL,
    revision             integer NOT NULL,
    failed_payments_90d  integer NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

CREATE TABLE support_snapshots (
    user_id                        text COLLATE "C" NOT NULL,
    as_of                          date NOT NULL,
    as_of_ts                       timestamptz NOT NULL,
    revision                       integer NOT NULL,
    support_tickets_90d            integer NOT NULL,
    ticket_avg_resolution_hrs_90d  double precision NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

CREATE TABLE labels (
    user_id      text COLLATE "C" NOT NULL,
    as_of        date NOT NULL,
    as_of_ts     timestamptz NOT NULL,
    revision     integer NOT NULL,
    churn_label  boolean NOT NULL,
    PRIMARY KEY (user_id, as_of_ts)
) PARTITION BY LIST (as_of_ts);

-- Move each existing month over as revision 1 (what ingest does, in SQL).
DO $$
DECLARE
    month record;
    parent text;
    part text;
    cols text;
    log_id bigint;
BEGIN
    FOR month IN SELECT DISTINCT as_of FROM user_snapshots_legacy ORDER BY as_of LOOP
        SELECT id INTO log_id FROM ingestion_log
            WHERE as_of = month.as_of AND status = 'succeeded' ORDER BY id DESC LIMIT 1;
        IF log_id IS NULL THEN
            INSERT INTO ingestion_log (month_dir, as_of, file_hashes, row_counts, started_at, finished_at, status)
                VALUES ('(before revisions)', month.as_of, '{}', '{}', now(), now(), 'succeeded')
                RETURNING id INTO log_id;
        END IF;
        UPDATE ingestion_log SET revision = 1 WHERE id = log_id;
        INSERT INTO snapshot_revisions (as_of, revision, ingestion_id, file_hashes, row_counts, created_at)
            SELECT as_of, 1, id, file_hashes, row_counts, finished_at FROM ingestion_log WHERE id = log_id;
        FOREACH parent IN ARRAY ARRAY['user_snapshots', 'subscription_snapshots', 'usage_snapshots',
                                      'payments_snapshots', 'support_snapshots', 'labels'] LOOP
            part := format('%s_%s_r1', parent, to_char(month.as_of, 'YYYY_MM_DD'));
            EXECUTE format('CREATE TABLE revisions.%I (LIKE public.%I)', part, parent);
            EXECUTE format(
                'ALTER TABLE revisions.%I ADD CONSTRAINT %I CHECK (as_of = %L AND as_of_ts = %L)',
                part, part || '_month', month.as_of, (month.as_of::timestamp AT TIME ZONE 'UTC'));
            SELECT string_agg(quote_ident(column_name), ', ') INTO cols FROM information_schema.columns
                WHERE table_schema = 'public' AND table_name = parent || '_legacy';
            EXECUTE format('INSERT INTO revisions.%I (%s, revision) SELECT %s, 1 FROM public.%I WHERE as_of = %L',
                           part, cols, cols, parent || '_legacy', month.as_of);
            EXECUTE format('ALTER TABLE revisions.%I ADD PRIMARY KEY (user_id, as_of_ts)', part);
            EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION revisions.%I FOR VALUES IN (%L)',
                           parent, part, (month.as_of::timestamp AT TIME ZONE 'UTC'));
        END LOOP;
    END LOOP;
END
$$;

DROP TABLE users_legacy, subscriptions_legacy, usage_agg_30d_legacy, payments_agg_90d_legacy,
    support_agg_90d_legacy, user_snapshots_legacy, subscription_snapshots_legacy, usage_snapshots_legacy,
    payments_snapshots_legacy, support_snapshots_legacy, labels_legacy;

-- The latest export of every user: the newest month that has the user (an older month never hides it).
CREATE VIEW users AS
    SELECT DISTINCT ON (user_id) user_id, signup_date, user_gender, user_is_senior, has_family,
        has_dependents, as_of
    FROM user_snapshots ORDER BY user_id, as_of_ts DESC;
CREATE VIEW subscriptions AS
    SELECT DISTINCT ON (user_id) user_id, months_active, plan_stream_tv, plan_stream_movies, contract_type,
        paperless_billing, monthly_fee, total_paid, net_service, as_of
    FROM subscription_snapshots ORDER BY user_id, as_of_ts DESC;
CREATE VIEW usage_agg_30d AS
    SELECT DISTINCT ON (user_id) user_id, watch_hours_30d, avg_session_mins_7d, unique_devices_30d, skips_7d,
        rebuffer_events_7d, as_of
    FROM usage_snapshots ORDER BY user_id, as_of_ts DESC;
CREATE VIEW payments_agg_90d AS
    SELECT DISTINCT ON (user_id) user_id, failed_payments_90d, as_of
    FROM payments_snapshots ORDER BY user_id, as_of_ts DESC;
CREATE VIEW support_agg_90d AS
    SELECT DISTINCT ON (user_id) user_id, support_tickets_90d, ticket_avg_resolution_hrs_90d, as_of
    FROM support_snapshots ORDER BY user_id, as_of_ts DESC;
