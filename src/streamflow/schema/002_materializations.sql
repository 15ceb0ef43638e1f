-- The log of materializations: what each online store holds since finished_at (one row per run that
-- wrote something). IF NOT EXISTS adopts the table that StreamFlow created at materialize time before
-- this migration existed.

CREATE TABLE IF NOT EXISTS materializations (
    id              bigserial PRIMARY KEY,
    project         text NOT NULL,
    online_store    text NOT NULL,
    as_of           date NOT NULL,
    snapshot_as_of  date NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    rows            bigint NOT NULL,
    users           bigint NOT NULL,
    ingestion_id    bigint NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL
);
