//! The HTTP client behind `helios-repl submit` and `helios-repl jobs …`, and the tables it
//! prints for a person.

use std::path::Path;

use serde::Deserialize;

use crate::api::routes::encode_path_segment;
use crate::control::job_control::{
    AsOfRows, ExportRequest, ExportStatus, JobEvents, JobStatus, ResyncRequest, SyncRequest,
    SyncResult,
};
use crate::control::job_spec::JobSpec;

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or sent something unreadable.
    #[error("cannot talk to the server at {base}: {detail}")]
    Transport { base: String, detail: String },
    /// The server refused the request.
    #[error("server answered {status}: {error}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        status: u16,
        error: String,
        field: Option<String>,
    },
    /// The job file could not be read.
    #[error("cannot read {path}: {detail}")]
    File { path: String, detail: String },
    /// What the client should trust for `https://` could not be set up.
    #[error("TLS set-up for the server at {base}: {detail}")]
    Tls { base: String, detail: String },
}

/// An error with the causes under it (reqwest's own message leaves out why a connection
/// failed: the certificate it refused, say).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A job file's bytes and the media type they are sent as (JSON if the name ends in
/// `.json`, else TOML).
fn spec_file(path: &Path) -> Result<(Vec<u8>, &'static str), ClientError> {
    let body = std::fs::read(path).map_err(|e| ClientError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let content_type = if path.extension().is_some_and(|e| e == "json") {
        "application/json"
    } else {
        "application/toml"
    };
    Ok((body, content_type))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct JobList {
    jobs: Vec<JobStatus>,
}

/// A client of one server.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (`http://127.0.0.1:7300`, or `https://…` for a server with
    /// `--tls-cert`, trusted through `ca_file` if given, else the system's roots).
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<ApiClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let tls_error = |detail: String| ClientError::Tls {
            base: base.clone(),
            detail,
        };
        let tls = if base.starts_with("https://") || ca_file.is_some() {
            crate::api::tls::client_config(ca_file).map_err(|e| tls_error(e.to_string()))?
        } else {
            // Never used over http://, but reqwest's rustls needs one (it has no
            // process-wide provider to build its own).
            crate::api::tls::client_config_without_roots().map_err(|e| tls_error(e.to_string()))?
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| tls_error(with_causes(&e)))?;
        Ok(ApiClient { base, token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| {
            let mut detail = with_causes(&e);
            if detail.contains("invalid peer certificate") {
                detail.push_str(
                    " (for a server whose certificate a private CA signed, or a self-signed \
                     one, give that certificate with --ca-file)",
                );
            }
            ClientError::Transport {
                base: self.base.clone(),
                detail,
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
        Err(ClientError::Api {
            status,
            error: body.as_ref().map(|b| b.error.clone()).unwrap_or(text),
            field: body.and_then(|b| b.field),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        resp.json().await.map_err(|e| ClientError::Transport {
            base: self.base.clone(),
            detail: format!("unreadable answer: {e}"),
        })
    }

    /// Submits a job file (`.json` as JSON, anything else as TOML); returns the job id.
    pub async fn submit_file(&self, path: &Path) -> Result<String, ClientError> {
        let (body, content_type) = spec_file(path)?;
        let req = self
            .request(reqwest::Method::POST, "/v1/jobs")
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let created: Created = self.json(self.send(req).await?).await?;
        Ok(created.id)
    }

    /// Replaces the spec of the job the file names (`name`) with the file's; returns the
    /// job as it restarts.
    pub async fn replace_file(&self, path: &Path) -> Result<JobStatus, ClientError> {
        let (body, content_type) = spec_file(path)?;
        let unreadable = |detail: String| ClientError::File {
            path: path.display().to_string(),
            detail,
        };
        let text = std::str::from_utf8(&body).map_err(|e| unreadable(e.to_string()))?;
        let spec = if content_type == "application/json" {
            JobSpec::from_json_str(text)
        } else {
            JobSpec::from_toml_str(text)
        }
        .map_err(|e| unreadable(e.to_string()))?;
        let req = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/jobs/{}", encode_path_segment(&spec.name)),
            )
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.json(self.send(req).await?).await
    }

    /// Every job.
    pub async fn list(&self) -> Result<Vec<JobStatus>, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::GET, "/v1/jobs"))
            .await?;
        Ok(self.json::<JobList>(resp).await?.jobs)
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobStatus, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}")))
            .await?;
        self.json(resp).await
    }

    /// A job's last `limit` events, newest first.
    pub async fn events(&self, id: &str, limit: u32) -> Result<JobEvents, ClientError> {
        let path = format!("/v1/jobs/{id}/events?limit={limit}");
        let resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        self.json(resp).await
    }

    /// Pauses a job.
    pub async fn pause(&self, id: &str) -> Result<JobStatus, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::POST, &format!("/v1/jobs/{id}/pause")))
            .await?;
        self.json(resp).await
    }

    /// Resumes a job.
    pub async fn resume(&self, id: &str) -> Result<JobStatus, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::POST, &format!("/v1/jobs/{id}/resume")))
            .await?;
        self.json(resp).await
    }

    /// Reloads tables of a job from the source: whole, or only `tenants`' rows.
    pub async fn resync(
        &self,
        id: &str,
        tables: Vec<String>,
        tenants: Vec<String>,
    ) -> Result<JobStatus, ClientError> {
        let path = format!("/v1/jobs/{}/resync", encode_path_segment(id));
        let resp = self
            .send(
                self.request(reqwest::Method::POST, &path)
                    .json(&ResyncRequest { tables, tenants }),
            )
            .await?;
        self.json(resp).await
    }

    /// Waits until a job holds every change its source committed, then raises its
    /// sequences on its targets.
    pub async fn sync(
        &self,
        id: &str,
        timeout_secs: Option<u64>,
    ) -> Result<SyncResult, ClientError> {
        let path = format!("/v1/jobs/{}/sync", encode_path_segment(id));
        let resp = self
            .send(
                self.request(reqwest::Method::POST, &path)
                    .json(&SyncRequest { timeout_secs }),
            )
            .await?;
        self.json(resp).await
    }

    /// A tenant's rows of a table as of a system time and a valid time.
    pub async fn rows_as_of(
        &self,
        tenant: &str,
        table: &str,
        system: Option<&str>,
        valid: Option<&str>,
        key: &[String],
    ) -> Result<AsOfRows, ClientError> {
        let mut query: Vec<String> = Vec::new();
        for k in key {
            query.push(format!("key={}", encode_path_segment(k)));
        }
        if let Some(s) = system {
            query.push(format!("system_time={}", encode_path_segment(s)));
        }
        if let Some(v) = valid {
            query.push(format!("valid_time={}", encode_path_segment(v)));
        }
        let path = format!(
            "/v1/tenants/{}/tables/{}/rows?{}",
            encode_path_segment(tenant),
            encode_path_segment(table),
            query.join("&")
        );
        let resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        self.json(resp).await
    }

    /// Starts an export.
    pub async fn start_export(&self, request: &ExportRequest) -> Result<ExportStatus, ClientError> {
        let resp = self
            .send(
                self.request(reqwest::Method::POST, "/v1/exports")
                    .json(request),
            )
            .await?;
        self.json(resp).await
    }

    /// An export's progress.
    pub async fn export_status(&self, id: &str) -> Result<ExportStatus, ClientError> {
        let path = format!("/v1/exports/{}", encode_path_segment(id));
        let resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        self.json(resp).await
    }

    /// Stops and removes a job.
    pub async fn delete(&self, id: &str, drop_slot: bool) -> Result<(), ClientError> {
        let path = format!("/v1/jobs/{id}?drop_slot={drop_slot}");
        self.send(self.request(reqwest::Method::DELETE, &path))
            .await?;
        Ok(())
    }
}

/// As-of rows as a table for a person.
pub fn rows_table(rows: &AsOfRows) -> String {
    let mut out = format!(
        "# {} tenant {} as of system {} / valid {} (from {}, job {}): {} rows\n",
        rows.table,
        rows.tenant,
        rows.system_time,
        rows.valid_time,
        rows.source,
        rows.job,
        rows.rows.len()
    );
    out.push_str(&rows.columns.join("\t"));
    out.push('\n');
    for row in &rows.rows {
        let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

/// A job's events as a table for a person: when, what, why; newest first, as they come.
pub fn events_table(events: &JobEvents) -> String {
    let mut out = String::new();
    if events.events.is_empty() {
        out.push_str(&format!("no events recorded for job {}\n", events.job));
        return out;
    }
    let kind_width = events
        .events
        .iter()
        .map(|e| e.kind.len())
        .max()
        .unwrap_or(0)
        .max("EVENT".len());
    out.push_str(&format!(
        "{:<27} {:<kind_width$} DETAIL\n",
        "AT (UTC)", "EVENT"
    ));
    for e in &events.events {
        out.push_str(&format!(
            "{:<27} {:<kind_width$} {}\n",
            e.at,
            e.kind,
            e.detail.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// A table of jobs for a person.
pub fn jobs_table(jobs: &[JobStatus]) -> String {
    let mut out = format!(
        "{:<24} {:<13} {:>10} {:>12} {:>9} {:>12} {:>7}  {}\n",
        "JOB", "STATE", "ROWS/S", "ROWS", "LAG S", "LAG BYTES", "ERRORS", "TENANTS"
    );
    for j in jobs {
        out.push_str(&format!(
            "{:<24} {:<13} {:>10.0} {:>12} {:>9.2} {:>12} {:>7}  {}\n",
            j.id,
            serde_json::to_value(j.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            j.rows_per_second,
            j.rows_total,
            j.lag_seconds,
            j.lag_bytes,
            j.errors,
            j.tenants.join(",")
        ));
    }
    out
}

/// One job in detail for a person.
pub fn job_detail(j: &JobStatus) -> String {
    let mut out = jobs_table(std::slice::from_ref(j));
    out.push_str(&format!("confirmed LSN: {}\n", j.confirmed_lsn));
    if let Some(r) = &j.reason {
        out.push_str(&format!("reason: {r}\n"));
    }
    out.push_str(&format!("tables: {}\n", j.tables.join(", ")));
    for t in &j.tables_in_error {
        out.push_str(&format!(
            "table in error: {} (sink {}): {} (reload it with `jobs resync {} {}` once the target is mended)\n",
            t.table, t.sink, t.reason, j.id, t.table
        ));
    }
    for t in &j.tables_left_out {
        out.push_str(&format!(
            "table not carried: {} matches {} but {}\n",
            t.table,
            t.pattern,
            t.reason.strip_prefix("it ").unwrap_or(&t.reason)
        ));
    }
    for problem in &j.sequence_problems {
        out.push_str(&format!("{problem}\n"));
    }
    for t in &j.renamed_tables {
        out.push_str(&format!(
            "table renamed on the source: {} is {} there now (its changes keep going to {}; name it {} in the spec, after renaming the targets' table alike, before the job's next start)\n",
            t.table, t.source_name, t.table, t.source_name
        ));
    }
    if let Some(slot) = &j.slot {
        let limit = match slot.safe_wal_bytes {
            Some(safe) => {
                format!("the source may write {safe} more before it invalidates the slot")
            }
            None => "no max_slot_wal_keep_size: the source keeps it without bound".to_string(),
        };
        out.push_str(&format!(
            "replication slot: {}, keeps {} bytes of WAL ({limit})\n",
            slot.wal_status, slot.retained_wal_bytes
        ));
    }
    if let Some(s) = &j.snapshot {
        out.push_str(&format!(
            "snapshot: {}/{} table loads, {} rows, {} bytes\n",
            s.loads_done, s.loads_total, s.rows, s.bytes
        ));
    }
    if !j.tenant_status.is_empty() {
        out.push_str(&format!(
            "{:<16} {:>16} {:>12} {:>9}\n",
            "TENANT", "DURABLE LSN", "ROWS", "LAG S"
        ));
        for t in &j.tenant_status {
            out.push_str(&format!(
                "{:<16} {:>16} {:>12} {:>9.3}\n",
                t.tenant,
                t.durable_lsn.as_deref().unwrap_or("-"),
                t.rows,
                t.lag_seconds
            ));
        }
    }
    out
}
