-- HeliosDB metadata store, version 1. Applied by `helios-repl serve` at start
-- (idempotent: every statement can run again).
CREATE SCHEMA IF NOT EXISTS helios_meta;

-- Submitted job specs, versioned. DSNs are not stored here: the spec's dsn fields hold
-- `helios_connection=<name>` references into `connections`.
CREATE TABLE IF NOT EXISTS helios_meta.replication_configs (
    job text NOT NULL,
    version integer NOT NULL,
    spec jsonb NOT NULL,
    desired_state text NOT NULL CHECK (desired_state IN ('running', 'paused', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, version)
);

-- Per-tenant progress as the sinks reported it (the authoritative checkpoint lives in each
-- target, in the same transaction as the rows; this is its mirror for the API and metrics).
CREATE TABLE IF NOT EXISTS helios_meta.replication_checkpoints (
    job text NOT NULL,
    tenant text NOT NULL,
    lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, tenant)
);

-- State changes and errors.
CREATE TABLE IF NOT EXISTS helios_meta.replication_events (
    id bigserial PRIMARY KEY,
    job text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    detail text
);
CREATE INDEX IF NOT EXISTS replication_events_job_at ON helios_meta.replication_events (job, at);

-- Named connection strings. Never logged; API responses show them redacted.
CREATE TABLE IF NOT EXISTS helios_meta.connections (
    name text PRIMARY KEY,
    dsn text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
