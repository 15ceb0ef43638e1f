-- Raw tables hold the latest export of every user (keyed by user_id, with the as_of that wrote it).
-- Snapshot and label tables hold every month, keyed by (user_id, as_of), and are never overwritten
-- by another month. as_of_ts is the same date as a UTC timestamp, the event time Feast reads.

CREATE TABLE users (
    user_id         text PRIMARY KEY,
    signup_date     date NOT NULL,
    user_gender     text NOT NULL,
    user_is_senior  boolean NOT NULL,
    has_family      boolean NOT NULL,
    has_dependents  boolean NOT NULL,
    as_of           date NOT NULL
);

CREATE TABLE subscriptions (
    user_id             text PRIMARY KEY,
    months_active       integer NOT NULL,
    plan_stream_tv      boolean,
    plan_stream_movies  boolean,
    contract_type       text NOT NULL,
    paperless_billing   boolean NOT NULL,
    monthly_fee         numeric(12, 2) NOT NULL,
    total_paid          numeric(14, 2) NOT NULL,
    net_service         text NOT NULL,
    as_of               date NOT NULL
);

CREATE TABLE usage_agg_30d (
    user_id              text PRIMARY KEY,
    watch_hours_30d      double precision NOT NULL,
    avg_session_mins_7d  double precision NOT NULL,
    unique_devices_30d   integer NOT NULL,
    skips_7d             integer NOT NULL,
    rebuffer_events_7d   integer NOT NULL,
    as_of                date NOT NULL
);

CREATE TABLE payments_agg_90d (
    user_id              text PRIMARY KEY,
    failed_payments_90d  integer NOT NULL,
    as_of                date NOT NULL
);

CREATE TABLE support_agg_90d (
    user_id                        text PRIMARY KEY,
    support_tickets_90d            integer NOT NULL,
    ticket_avg_resolution_hrs_90d  double precision NOT NULL,
    as_of                          date NOT NULL
);

CREATE TABLE user_snapshots (
    user_id         text NOT NULL,
    as_of           date NOT NULL,
    as_of_ts        timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    signup_date     date NOT NULL,
    user_gender     text NOT NULL,
    user_is_senior  boolean NOT NULL,
    has_family      boolean NOT NULL,
    has_dependents  boolean NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE TABLE subscription_snapshots (
    user_id             text NOT NULL,
    as_of               date NOT NULL,
    as_of_ts            timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    months_active       integer NOT NULL,
    monthly_fee         numeric(12, 2) NOT NULL,
    total_paid          numeric(14, 2) NOT NULL,
    paperless_billing   boolean NOT NULL,
    plan_stream_tv      boolean,
    plan_stream_movies  boolean,
    net_service         text NOT NULL,
    contract_type       text NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE TABLE usage_snapshots (
    user_id              text NOT NULL,
    as_of                date NOT NULL,
    as_of_ts             timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    watch_hours_30d      double precision NOT NULL,
    avg_session_mins_7d  double precision NOT NULL,
    unique_devices_30d   integer NOT NULL,
    skips_7d             integer NOT NULL,
    rebuffer_events_7d   integer NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE TABLE payments_snapshots (
    user_id              text NOT NULL,
    as_of                date NOT NULL,
    as_of_ts             timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    failed_payments_90d  integer NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE TABLE support_snapshots (
    user_id                        text NOT NULL,
    as_of                          date NOT NULL,
    as_of_ts                       timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    support_tickets_90d            integer NOT NULL,
    ticket_avg_resolution_hrs_90d  double precision NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE TABLE labels (
    user_id      text NOT NULL,
    as_of        date NOT NULL,
    as_of_ts     timestamptz GENERATED ALWAYS AS (as_of::timestamp AT TIME ZONE 'UTC') STORED,
    churn_label  boolean NOT NULL,
    PRIMARY KEY (user_id, as_of)
);

CREATE INDEX subscription_snapshots_as_of ON subscription_snapshots (as_of_ts);
CREATE INDEX usage_snapshots_as_of ON usage_snapshots (as_of_ts);
CREATE INDEX payments_snapshots_as_of ON payments_snapshots (as_of_ts);
CREATE INDEX support_snapshots_as_of ON support_snapshots (as_of_ts);
CREATE INDEX user_snapshots_as_of ON user_snapshots (as_of_ts);
CREATE INDEX labels_as_of ON labels (as_of);

CREATE TABLE ingestion_log (
    id           bigserial PRIMARY KEY,
    month_dir    text NOT NULL,
    as_of        date NOT NULL,
    file_hashes  jsonb NOT NULL,
    row_counts   jsonb NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    error        text
);
