-- Retention policies: history of a tenant's table older than `days` days leaves the
-- history table (it stays in the job's Parquet cold tier). `horizon_*` record how far
-- the last retention pass moved history out, so as-of queries before it read Parquet.
CREATE TABLE IF NOT EXISTS helios_meta.data_retention_policies (
    tenant         text        NOT NULL,
    table_name     text        NOT NULL,
    days           integer     NOT NULL CHECK (days >= 0),
    horizon_micros bigint,
    horizon_lsn    pg_lsn,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, table_name)
)
