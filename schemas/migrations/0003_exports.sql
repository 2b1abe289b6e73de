-- On-demand exports: the request and where it ended, so `GET /v1/exports/{id}` answers
-- after a restart and an export the server was running when it stopped is resumed (the
-- cold-tier writer continues after what the output's manifest covers).
CREATE TABLE IF NOT EXISTS helios_meta.exports (
    id           text        PRIMARY KEY,
    request      jsonb       NOT NULL,
    job          text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    rows_total   bigint      NOT NULL DEFAULT 0,
    rows_written bigint      NOT NULL DEFAULT 0,
    files        jsonb       NOT NULL DEFAULT '[]',
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
)
