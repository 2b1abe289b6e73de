-- Access-frequency prediction: each job's model (weights as JSON, so a person can read
-- them) and the hottest predicted key buckets of its latest window.
CREATE TABLE IF NOT EXISTS helios_meta.ml_models (
    job          text        PRIMARY KEY,
    model        jsonb       NOT NULL,
    in_use       text        NOT NULL,
    model_error  double precision,
    heuristic_error double precision,
    windows      bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS helios_meta.access_predictions (
    job          text        NOT NULL,
    tenant       text        NOT NULL,
    table_name   text        NOT NULL,
    bucket       bigint      NOT NULL,
    predicted    double precision NOT NULL,
    predicted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, tenant, table_name, bucket)
);
