-- Monitoring: what the API answered (prediction_log), what batch scoring computed (predictions) and
-- the drift reports (drift_reports, whose latest drift_share the API exports as a gauge).

-- Append-only, written by the API in COPY batches; no foreign keys so that logging never fails on them.
CREATE TABLE prediction_log (
    id              bigserial PRIMARY KEY,
    logged_at       timestamptz NOT NULL,   -- when the API computed the prediction
    endpoint        text NOT NULL CHECK (endpoint IN ('predict', 'batch')),
    user_id         text NOT NULL,
    model_name      text NOT NULL,
    model_version   integer NOT NULL,
    probability     double precision NOT NULL,
    prediction      smallint NOT NULL CHECK (prediction IN (0, 1)),
    features_as_of  timestamptz             -- event time of the online features used
);
CREATE INDEX prediction_log_logged_at ON prediction_log (logged_at);
CREATE INDEX prediction_log_user ON prediction_log (user_id, logged_at);

-- One row per user, snapshot and model version; re-scoring replaces a (as_of, model_version) batch.
CREATE TABLE predictions (
    user_id        text NOT NULL,
    as_of          date NOT NULL,
    model_version  integer NOT NULL,
    probability    double precision NOT NULL,
    prediction     smallint NOT NULL CHECK (prediction IN (0, 1)),
    threshold      double precision NOT NULL,
    scored_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, as_of, model_version)
);
CREATE INDEX predictions_as_of_version ON predictions (as_of, model_version);

CREATE TABLE drift_reports (
    id                     bigserial PRIMARY KEY,
    reference_as_of        date NOT NULL,
    current_as_of          date NOT NULL,
    feature_service        text NOT NULL,
    drift_share            double precision NOT NULL,   -- share of the service's features flagged
    drifted_features       text[] NOT NULL,
    target_drift           double precision,            -- churn rate current - reference (NULL: no labels)
    target_drift_p_value   double precision,
    prediction_drift       double precision,            -- drift score of the production model's scores
    model_version          integer,                     -- the production version that scored both months
    mlflow_run_id          text,
    report_html            text NOT NULL,
    report_json            text NOT NULL,
    details                jsonb NOT NULL,              -- per-feature scores, methods, thresholds, flags
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_reports_latest ON drift_reports (current_as_of, created_at);
