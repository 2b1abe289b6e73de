//! Unit tests of the parent module.
use super::families::stem;
use super::names::*;
use super::*;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------
// A small validating reader of the OpenMetrics text format (no parser crate is
// vendored). It checks what Prometheus relies on: HELP/TYPE before a family's samples,
// families not interleaved, sample names that belong to their family's type, label
// names and escaping, float values, unique series, cumulative histogram buckets and
// the final `# EOF`.

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// family name → type
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<_> = self
            .find(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
        hits.first().map(|s| s.value)
    }

    /// Distinct values of label `label` among samples of `name` matching `labels`.
    fn label_values(&self, name: &str, label: &str, labels: &[(&str, &str)]) -> Vec<String> {
        let set: BTreeSet<String> = self
            .find(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        set.into_iter().collect()
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            // Reject Rust-only spellings such as "inf" / "infinity".
            if s.chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
            {
                return Err(format!("bad value {s:?}"));
            }
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        rest = rest.strip_prefix(',').ok_or("expected , or }")?;
    }
}

fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" => &[""],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        _ => &[],
    }
}

fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helps = BTreeSet::new();
    let mut finished = BTreeSet::new(); // families whose block has ended
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    let mut eof = false;
    for (n, line) in text.split_terminator('\n').enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if eof {
            return Err(err("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts.next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(err(format!("bad family name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if let Some(prev) = current.take() {
                    finished.insert(prev);
                }
                if finished.contains(name) {
                    return Err(err(format!("family {name} interleaved")));
                }
                current = Some(name.to_owned());
            }
            match kw {
                "HELP" => {
                    if !helps.insert(name.to_owned()) {
                        return Err(err("second HELP".into()));
                    }
                }
                "TYPE" => {
                    if allowed_suffixes(arg).is_empty() {
                        return Err(err(format!("unknown type {arg:?}")));
                    }
                    if out.types.insert(name.to_owned(), arg.to_owned()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(err("family name does not end in its unit".into()));
                    }
                }
                _ => return Err(err(format!("unknown descriptor {kw:?}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or empty line".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        // No exemplars or timestamps are written by this module.
        let value = parse_value(value).map_err(err)?;
        let family = current
            .as_deref()
            .ok_or_else(|| err("sample before TYPE".into()))?;
        let kind = out
            .types
            .get(family)
            .ok_or_else(|| err(format!("family {family} has no TYPE")))?;
        if !helps.contains(family) {
            return Err(err(format!("family {family} has no HELP")));
        }
        let suffix = name
            .strip_prefix(family)
            .ok_or_else(|| err(format!("sample outside family {family}")))?;
        if !allowed_suffixes(kind).contains(&suffix) {
            return Err(err(format!("suffix {suffix:?} not allowed for a {kind}")));
        }
        if (suffix == "_bucket") != labels.contains_key("le") {
            return Err(err("le label on a non-bucket or missing on a bucket".into()));
        }
        if !series.insert((name.to_owned(), labels.clone())) {
            return Err(err("duplicate series".into()));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF".into());
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Buckets are cumulative, end in `+Inf`, and `+Inf` equals `_count`.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.find(&format!("{family}_bucket")) {
            let mut key = s.labels.clone();
            let le = parse_value(&key.remove("le").unwrap_or_default())?;
            by_series.entry(key).or_default().push((le, s.value));
        }
        for (key, buckets) in by_series {
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            if !les.windows(2).all(|w| w[0] < w[1]) || les.last() != Some(&f64::INFINITY) {
                return Err(format!("{family}{key:?}: bad bucket bounds {les:?}"));
            }
            if !buckets.windows(2).all(|w| w[0].1 <= w[1].1) {
                return Err(format!("{family}{key:?}: buckets not cumulative"));
            }
            let count = e
                .samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == key)
                .ok_or(format!("{family}{key:?}: no _count"))?;
            if buckets.last().map(|b| b.1) != Some(count.value) {
                return Err(format!("{family}{key:?}: +Inf bucket != _count"));
            }
        }
    }
    Ok(())
}

fn parse(reg: &MetricsRegistry) -> Exposition {
    let text = reg.encode();
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Records something in every metric of `job`.
fn exercise(m: &JobMetrics) {
    m.rows("3", OP_UPSERT, 5);
    m.bytes_received(100);
    m.bytes_sent("postgres", 80);
    m.sink_error("postgres");
    m.apply_batch("postgres", 0.02);
    m.set_lag(None, 1.5, 4096);
    m.set_lag(Some("3"), 0.5, 10);
    m.set_confirmed_lsn(0x1_0000_0000 + 42);
    m.set_state(STATE_STREAMING);
    m.set_hotness([("3", 12.5), ("9", 1.0)]);
    m.set_prediction_error("model", 0.7);
    m.set_prediction_error("heuristic", 0.9);
    m.set_predictor_in_use("model");
    m.access_events(4);
    m.throttled("postgres", 0.25);
    m.encode_seconds("nats", 0.125);
    m.set_codec_fast_mode("nats", true);
    m.set_sink_round_trip("postgres", 0.0125);
    m.set_sink_max_in_flight("postgres", 8);
    m.set_sink_tables_in_error("postgres", 2);
    m.cold_compaction(SIDE_MERGED, 16, 4000);
    m.cold_compaction(SIDE_WRITTEN, 1, 3000);
    m.set_history_versions_held(1234);
    m.set_history_row_bytes(4096, 65536);
    m.set_sink_backlog(120, 98_304);
    m.history_row_walks(3);
    m.set_slot_wal(16 << 20, Some(4 << 20));
    m.set_cutover_gaps(2, 1);
}

// ---------------------------------------------------------------------------------

#[test]
fn a_slot_without_a_wal_limit_has_no_safe_bytes_series() {
    let reg = MetricsRegistry::new();
    let m = reg.register_job("unbounded", None);
    m.set_slot_wal(1024, None);
    let e = parse(&reg);
    assert_eq!(
        e.value(SOURCE_SLOT_RETAINED_WAL_BYTES, &[(LABEL_JOB, "unbounded")]),
        Some(1024.0)
    );
    assert_eq!(e.find(SOURCE_SLOT_SAFE_WAL_BYTES).count(), 0);
}

#[test]
fn the_reader_rejects_malformed_text() {
    let head = "# HELP a x.\n# TYPE a gauge\n";
    for (bad, why) in [
        ("b 1\n# EOF\n", "sample of a family without HELP/TYPE"),
        ("a{b=\"1} 1\n# EOF\n", "unterminated value"),
        ("a{b=\"\\q\"} 1\n# EOF\n", "bad escape"),
        ("a{1b=\"x\"} 1\n# EOF\n", "bad label name"),
        ("a one\n# EOF\n", "bad value"),
        ("a inf\n# EOF\n", "Rust spelling of +Inf"),
        ("a_total 1\n# EOF\n", "counter suffix on a gauge"),
        ("a 1\na 2\n# EOF\n", "duplicate series"),
        ("a 1\n", "no EOF"),
        ("# UNIT a seconds\na 1\n# EOF\n", "unit not a suffix"),
    ] {
        let text = format!("{head}{bad}");
        assert!(
            parse_exposition(&text).is_err(),
            "accepted ({why}): {text:?}"
        );
    }
    let good = format!("{head}a{{b=\"q\\\"\\\\\\n\"}} +Inf\n# EOF\n");
    let e = parse_exposition(&good).unwrap();
    assert_eq!(e.samples[0].labels["b"], "q\"\\\n");
    assert_eq!(e.samples[0].value, f64::INFINITY);
}

#[test]
fn encode_is_valid_openmetrics_and_names_every_metric() {
    let reg = MetricsRegistry::new();
    assert_eq!(reg.encode(), "# EOF\n", "no series, no families");
    let a = reg.register_job("orders", Some(&strings(&["3", "7"])));
    let b = reg.register_job("all-tenants", None);
    exercise(&a);
    exercise(&b);
    let text = reg.encode();
    assert!(text.ends_with("# EOF\n"));
    let e = parse(&reg);
    for name in ALL_METRICS {
        assert!(text.contains(name), "{name} missing from\n{text}");
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(e.types.contains_key(family), "no TYPE for {name}");
    }
    assert_eq!(e.types[stem(ROWS_REPLICATED_TOTAL, "_total")], "counter");
    assert_eq!(e.types[APPLY_BATCH_SECONDS], "histogram");
    assert_eq!(e.types[JOB_STATE], "gauge");
    assert!(text.contains("# UNIT helios_replication_lag_seconds seconds\n"));
    // Every sample carries the job label.
    assert!(e.samples.iter().all(|s| s.labels.contains_key(LABEL_JOB)));
    assert_eq!(
        e.value(SOURCE_CONFIRMED_LSN, &[(LABEL_JOB, "orders")]),
        Some(4_294_967_338.0)
    );
    assert_eq!(
        e.value(HISTORY_VERSIONS_HELD, &[(LABEL_JOB, "orders")]),
        Some(1234.0)
    );
    assert_eq!(
        e.value(SINK_BACKLOG_ROWS, &[(LABEL_JOB, "orders")]),
        Some(120.0)
    );
    assert_eq!(
        e.value(SINK_BACKLOG_BYTES, &[(LABEL_JOB, "orders")]),
        Some(98_304.0)
    );
    assert_eq!(
        e.value(HISTORY_ROW_WALKS_TOTAL, &[(LABEL_JOB, "orders")]),
        Some(3.0)
    );
    assert_eq!(
        e.value(SOURCE_SLOT_RETAINED_WAL_BYTES, &[(LABEL_JOB, "orders")]),
        Some(16_777_216.0)
    );
    assert_eq!(
        e.value(SOURCE_SLOT_SAFE_WAL_BYTES, &[(LABEL_JOB, "orders")]),
        Some(4_194_304.0)
    );
    assert_eq!(
        e.value(JOB_TABLES_LEFT_OUT, &[(LABEL_JOB, "orders")]),
        Some(2.0)
    );
    assert_eq!(
        e.value(TARGET_SEQUENCES_OUT_OF_STEP, &[(LABEL_JOB, "orders")]),
        Some(1.0)
    );
    for (place, want) in [(PLACE_MEMORY, 4096.0), (PLACE_DISK, 65536.0)] {
        assert_eq!(
            e.value(
                HISTORY_ROW_BYTES,
                &[(LABEL_JOB, "orders"), (LABEL_PLACE, place)]
            ),
            Some(want)
        );
    }
    let postgres = [(LABEL_JOB, "orders"), (LABEL_SINK, "postgres")];
    assert_eq!(e.value(SINK_ROUND_TRIP_SECONDS, &postgres), Some(0.0125));
    assert_eq!(e.value(SINK_MAX_IN_FLIGHT, &postgres), Some(8.0));
    assert_eq!(e.value(SINK_TABLES_IN_ERROR, &postgres), Some(2.0));
    assert!(text.contains("# UNIT helios_sink_round_trip_seconds seconds\n"));
    for (name, side, want) in [
        (COLD_COMPACTION_FILES_TOTAL, SIDE_MERGED, 16.0),
        (COLD_COMPACTION_FILES_TOTAL, SIDE_WRITTEN, 1.0),
        (COLD_COMPACTION_BYTES_TOTAL, SIDE_MERGED, 4000.0),
        (COLD_COMPACTION_BYTES_TOTAL, SIDE_WRITTEN, 3000.0),
    ] {
        assert_eq!(
            e.value(name, &[(LABEL_JOB, "orders"), (LABEL_SIDE, side)]),
            Some(want),
            "{name} {side}"
        );
    }
    assert_eq!(
        e.value(
            REPLICATION_LAG_BYTES,
            &[(LABEL_JOB, "orders"), (LABEL_TENANT, TENANT_ALL)]
        ),
        Some(4096.0)
    );
    assert_eq!(
        e.value(
            REPLICATION_LAG_SECONDS,
            &[(LABEL_JOB, "orders"), (LABEL_TENANT, "3")]
        ),
        Some(0.5)
    );
    // Buckets: 1 ms doubling to 32.768 s, plus +Inf.
    let les = e.label_values(
        &format!("{APPLY_BATCH_SECONDS}_bucket"),
        "le",
        &[(LABEL_JOB, "orders")],
    );
    assert_eq!(les.len(), 17);
    assert!(les.contains(&"0.001".to_owned()) && les.contains(&"32.768".to_owned()));
    assert!(les.contains(&"+Inf".to_owned()));
}

#[test]
fn label_values_are_escaped() {
    let reg = MetricsRegistry::new();
    let job = "we\"ird\\job\nname";
    let tenant = "t \"1\"\\";
    let m = reg.register_job(job, Some(&strings(&[tenant])));
    m.rows(tenant, OP_UPSERT, 2);
    let text = reg.encode();
    assert!(text.contains(r#"job="we\"ird\\job\nname""#), "{text}");
    let e = parse(&reg);
    assert_eq!(
        e.value(
            ROWS_REPLICATED_TOTAL,
            &[
                (LABEL_JOB, job),
                (LABEL_TENANT, tenant),
                (LABEL_OP, OP_UPSERT)
            ]
        ),
        Some(2.0)
    );
}

#[test]
fn counters_and_the_histogram_move() {
    let reg = MetricsRegistry::new();
    let m = reg.register_job("j", Some(&strings(&["3"])));
    m.rows("3", OP_UPSERT, 5);
    m.rows("3", OP_UPSERT, 7);
    m.rows("3", OP_DELETE, 1);
    m.rows(TENANT_ALL, OP_SKIPPED_REPLAY, 4);
    m.bytes_received(10);
    m.bytes_received(15);
    m.streamed_transactions(2);
    m.socket_reads(9, 4);
    m.socket_reads(1, 0);
    m.bytes_sent("postgres", 3);
    m.bytes_sent("postgres", 4);
    m.sink_error("postgres");
    m.sink_error("postgres");
    m.apply_batch("postgres", 0.0015);
    m.apply_batch("postgres", 0.5);
    m.apply_batch("postgres", 100.0);
    let e = parse(&reg);
    let rows = |tenant, op| {
        e.value(
            ROWS_REPLICATED_TOTAL,
            &[(LABEL_JOB, "j"), (LABEL_TENANT, tenant), (LABEL_OP, op)],
        )
    };
    assert_eq!(rows("3", OP_UPSERT), Some(12.0));
    assert_eq!(rows("3", OP_DELETE), Some(1.0));
    assert_eq!(
        rows("3", OP_SKIPPED_REPLAY),
        Some(0.0),
        "created at registration"
    );
    assert_eq!(rows(TENANT_ALL, OP_SKIPPED_REPLAY), Some(4.0));
    assert_eq!(rows(TENANT_ALL, OP_DEAD_LETTERED), Some(0.0));
    assert_eq!(e.value(BYTES_RECEIVED_TOTAL, &[]), Some(25.0));
    assert_eq!(e.value(SOURCE_STREAMED_TRANSACTIONS_TOTAL, &[]), Some(2.0));
    assert_eq!(e.value(SOURCE_SOCKET_READS_TOTAL, &[]), Some(10.0));
    assert_eq!(e.value(SOURCE_BATCHED_READS_TOTAL, &[]), Some(4.0));
    let sink = [(LABEL_JOB, "j"), (LABEL_SINK, "postgres")];
    assert_eq!(e.value(BYTES_SENT_TOTAL, &sink), Some(7.0));
    assert_eq!(e.value(SINK_ERRORS_TOTAL, &sink), Some(2.0));
    let h = |suffix: &str| e.value(&format!("{APPLY_BATCH_SECONDS}{suffix}"), &sink);
    assert_eq!(h("_count"), Some(3.0));
    assert!((h("_sum").unwrap() - 100.5015).abs() < 1e-9);
    let bucket = |le: &str| {
        e.value(
            &format!("{APPLY_BATCH_SECONDS}_bucket"),
            &[sink[0], sink[1], ("le", le)],
        )
    };
    assert_eq!(bucket("0.001"), Some(0.0));
    assert_eq!(bucket("0.002"), Some(1.0));
    assert_eq!(bucket("0.512"), Some(2.0));
    assert_eq!(bucket("32.768"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(3.0));
}

#[test]
fn transaction_stages_are_one_histogram_per_stage() {
    use crate::sinks::latency::LatencyStage;
    let reg = MetricsRegistry::new();
    let m = reg.register_job("j", None);
    m.transaction_stage("postgres", LatencyStage::ReaderToSink, 0.000_2);
    m.transaction_stage("postgres", LatencyStage::ReaderToSink, 0.003);
    m.transaction_stage("postgres", LatencyStage::ReaderToDurable, f64::NAN);
    m.transaction_stage("postgres", LatencyStage::SourceToReader, -1.0);
    let e = parse(&reg);
    let series = |stage: &str, suffix: &str, le: Option<&str>| {
        let mut labels = vec![
            (LABEL_JOB, "j"),
            (LABEL_SINK, "postgres"),
            (LABEL_STAGE, stage),
        ];
        labels.extend(le.map(|le| ("le", le)));
        e.value(&format!("{TRANSACTION_STAGE_SECONDS}{suffix}"), &labels)
    };
    assert_eq!(series("reader_to_sink", "_count", None), Some(2.0));
    assert_eq!(
        series("reader_to_sink", "_bucket", Some("0.0001")),
        Some(0.0)
    );
    assert_eq!(
        series("reader_to_sink", "_bucket", Some("0.0002")),
        Some(1.0)
    );
    assert_eq!(
        series("reader_to_sink", "_bucket", Some("0.0032")),
        Some(2.0)
    );
    assert_eq!(series("source_to_reader", "_count", None), Some(1.0));
    assert_eq!(series("source_to_reader", "_sum", None), Some(0.0));
    assert_eq!(
        series("reader_to_durable", "_count", None),
        Some(0.0),
        "NaN is ignored; the series exists with its sink's others"
    );
}

#[test]
fn gauges_ignore_non_finite_and_clamp_negative_values() {
    let reg = MetricsRegistry::new();
    let m = reg.register_job("j", None);
    m.set_lag(None, 2.0, 7);
    m.set_lag(None, f64::NAN, 8);
    m.set_lag(None, f64::INFINITY, 9);
    m.apply_batch("postgres", f64::NAN);
    m.apply_batch("postgres", -1.0);
    let e = parse(&reg);
    assert_eq!(e.value(REPLICATION_LAG_SECONDS, &[]), Some(2.0));
    assert_eq!(e.value(REPLICATION_LAG_BYTES, &[]), Some(7.0));
    assert_eq!(
        e.value(&format!("{APPLY_BATCH_SECONDS}_count"), &[]),
        Some(1.0)
    );
    assert_eq!(
        e.value(&format!("{APPLY_BATCH_SECONDS}_sum"), &[]),
        Some(0.0)
    );
    m.set_lag(None, -3.0, 0);
    assert_eq!(parse(&reg).value(REPLICATION_LAG_SECONDS, &[]), Some(0.0));
    m.set_sink_round_trip("postgres", 0.002);
    m.set_sink_round_trip("postgres", f64::NAN);
    m.set_sink_round_trip("postgres", -1.0);
    assert_eq!(parse(&reg).value(SINK_ROUND_TRIP_SECONDS, &[]), Some(0.002));
}

#[test]
fn tenant_label_is_bounded() {
    let reg = MetricsRegistry::new();
    let all = reg.register_job("all", None);
    let listed = reg.register_job("listed", Some(&strings(&["3", "7"])));
    let before = parse(&reg).samples.len();
    for i in 0..1000 {
        let tenant = format!("unknown-{i}");
        all.rows(&tenant, OP_UPSERT, 1);
        all.set_lag(Some(&tenant), 1.0, 1);
        listed.rows(&tenant, OP_DELETE, 1);
        listed.set_lag(Some(&tenant), 1.0, 1);
    }
    listed.rows("3", OP_UPSERT, 1);
    listed.rows("7", OP_UPSERT, 1);
    listed.set_lag(Some("3"), 1.0, 1);
    listed.set_lag(Some("7"), 1.0, 1);
    let e = parse(&reg);
    // Only the lag series (one for `all`, three for `listed`) are new.
    assert_eq!(e.samples.len(), before + 2 + 2 * 3);
    for name in [
        ROWS_REPLICATED_TOTAL,
        REPLICATION_LAG_SECONDS,
        REPLICATION_LAG_BYTES,
    ] {
        assert_eq!(
            e.label_values(name, LABEL_TENANT, &[(LABEL_JOB, "all")]),
            [TENANT_ALL]
        );
        assert_eq!(
            e.label_values(name, LABEL_TENANT, &[(LABEL_JOB, "listed")]),
            ["3", "7", TENANT_ALL]
        );
    }
    let tenants: BTreeSet<_> = e
        .samples
        .iter()
        .filter_map(|s| s.labels.get(LABEL_TENANT))
        .collect();
    assert_eq!(tenants.len(), 3, "{tenants:?}");
    assert_eq!(
        e.value(
            ROWS_REPLICATED_TOTAL,
            &[(LABEL_JOB, "all"), (LABEL_OP, OP_UPSERT)]
        ),
        Some(1000.0)
    );
    assert_eq!(
        e.value(
            ROWS_REPLICATED_TOTAL,
            &[
                (LABEL_JOB, "listed"),
                (LABEL_TENANT, TENANT_ALL),
                (LABEL_OP, OP_DELETE)
            ]
        ),
        Some(1000.0)
    );
    // Series per job: ops × (listed tenants + _all), the states, bytes received, streamed
    // transactions, socket reads and batched reads, lag.
    let listed_series = e
        .samples
        .iter()
        .filter(|s| s.labels[LABEL_JOB] == "listed")
        .count();
    assert_eq!(listed_series, OPS.len() * 3 + STATES.len() + 4 + 2 * 3);
}

#[test]
fn set_state_switches_the_one() {
    let reg = MetricsRegistry::new();
    let m = reg.register_job("j", None);
    let current = |e: &Exposition| -> Vec<String> {
        e.find(JOB_STATE)
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels[LABEL_STATE].clone())
            .collect()
    };
    let e = parse(&reg);
    assert_eq!(
        e.label_values(JOB_STATE, LABEL_STATE, &[]).len(),
        STATES.len()
    );
    assert!(current(&e).is_empty(), "no state before set_state");
    for state in [
        STATE_SNAPSHOTTING,
        STATE_STREAMING,
        STATE_PAUSED,
        STATE_STREAMING,
    ] {
        m.set_state(state);
        let e = parse(&reg);
        assert_eq!(current(&e), [state]);
        assert_eq!(e.find(JOB_STATE).filter(|s| s.value == 0.0).count(), 4);
    }
    m.set_state(STATE_FAILED);
    m.set_state(STATE_FAILED);
    assert_eq!(current(&parse(&reg)), [STATE_FAILED]);
}

#[test]
fn unregister_removes_only_that_job_and_the_old_handle_is_inert() {
    let reg = MetricsRegistry::new();
    let gone = reg.register_job("gone", Some(&strings(&["3"])));
    let kept = reg.register_job("kept", Some(&strings(&["3"])));
    exercise(&gone);
    exercise(&kept);
    let kept_before: Vec<Sample> = parse(&reg)
        .samples
        .into_iter()
        .filter(|s| s.labels[LABEL_JOB] == "kept")
        .collect();
    reg.unregister_job("gone");
    reg.unregister_job("never-registered");
    let e = parse(&reg);
    assert!(e.samples.iter().all(|s| s.labels[LABEL_JOB] == "kept"));
    assert_eq!(e.samples, kept_before);
    // A task still holding the handle records nowhere and creates nothing.
    exercise(&gone);
    gone.rows("3", OP_DELETE, 1);
    gone.sink_error("nats");
    assert_eq!(parse(&reg).samples, kept_before);
    // Registering the name again starts from zero.
    let again = reg.register_job("gone", Some(&strings(&["3"])));
    again.bytes_received(1);
    let e = parse(&reg);
    assert_eq!(
        e.value(BYTES_RECEIVED_TOTAL, &[(LABEL_JOB, "gone")]),
        Some(1.0)
    );
    reg.unregister_job("kept");
    reg.unregister_job("gone");
    assert_eq!(reg.encode(), "# EOF\n");
}

#[test]
fn register_is_idempotent_per_job_name() {
    let reg = MetricsRegistry::new();
    let a = reg.register_job("j", Some(&strings(&["3", "7"])));
    let b = reg.register_job("j", Some(&strings(&["7", "3", "3"])));
    assert!(Arc::ptr_eq(&a, &b));
    a.rows("3", OP_UPSERT, 1);
    b.rows("3", OP_UPSERT, 1);
    let row3 = [(LABEL_JOB, "j"), (LABEL_TENANT, "3"), (LABEL_OP, OP_UPSERT)];
    assert_eq!(parse(&reg).value(ROWS_REPLICATED_TOTAL, &row3), Some(2.0));
    let n = reg.register_job("n", None);
    assert!(Arc::ptr_eq(&n, &reg.register_job("n", None)));
    // A different tenant list replaces the job's series.
    let c = reg.register_job("j", Some(&strings(&["3"])));
    assert!(!Arc::ptr_eq(&a, &c));
    a.rows("3", OP_UPSERT, 100);
    let e = parse(&reg);
    assert_eq!(e.value(ROWS_REPLICATED_TOTAL, &row3), Some(0.0));
    assert_eq!(
        e.label_values(ROWS_REPLICATED_TOTAL, LABEL_TENANT, &[(LABEL_JOB, "j")]),
        ["3", TENANT_ALL]
    );
}

#[test]
fn recording_from_many_threads_adds_up() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MetricsRegistry>();
    assert_send_sync::<JobMetrics>();
    let reg = MetricsRegistry::new();
    let m = reg.register_job("j", Some(&strings(&["3"])));
    std::thread::scope(|s| {
        for t in 0..8 {
            let m = m.clone();
            let reg = reg.clone();
            s.spawn(move || {
                for i in 0..1000 {
                    m.rows(if i % 2 == 0 { "3" } else { "x" }, OP_UPSERT, 1);
                    m.sink_error(if t % 2 == 0 { "postgres" } else { "nats" });
                    m.set_state(STATES[i % STATES.len()]);
                    if i % 250 == 0 {
                        parse(&reg);
                    }
                }
            });
        }
    });
    let e = parse(&reg);
    let rows = |tenant| {
        e.value(
            ROWS_REPLICATED_TOTAL,
            &[(LABEL_TENANT, tenant), (LABEL_OP, OP_UPSERT)],
        )
    };
    assert_eq!(rows("3"), Some(4000.0));
    assert_eq!(rows(TENANT_ALL), Some(4000.0));
    let errors: f64 = e.find(SINK_ERRORS_TOTAL).map(|s| s.value).sum();
    assert_eq!(errors, 8000.0);
    assert_eq!(e.find(JOB_STATE).filter(|s| s.value == 1.0).count(), 1);
}

// ---------------------------------------------------------------------------------

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/grafana-dashboard.json"
);

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_parses_and_uses_every_metric() {
    let text = std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let job = var("job").expect("job variable");
    assert_eq!(job["type"], "query");

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let mut mine = Vec::new();
        collect_exprs(&p["targets"], &mut mine);
        assert!(!mine.is_empty(), "panel {} has no query", p["title"]);
        for e in &mine {
            assert!(e.contains("job=~\"$job\""), "{e} ignores $job");
        }
        exprs.extend(mine);
    }
    for name in ALL_METRICS {
        assert!(
            exprs.iter().any(|e| e.contains(name)),
            "no panel queries {name}"
        );
    }
    let all = exprs.join("\n");
    for needle in [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
        "helios_apply_batch_seconds_bucket",
        "helios_transaction_stage_seconds_bucket",
        "rate(helios_rows_replicated_total",
    ] {
        assert!(all.contains(needle), "dashboard lacks {needle}");
    }
}

const ALERT_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/prometheus-alerts.yml");

#[test]
fn the_alert_rules_name_only_metrics_we_export() {
    let text =
        std::fs::read_to_string(ALERT_RULES).unwrap_or_else(|e| panic!("{ALERT_RULES}: {e}"));
    let names = regex::Regex::new(r"helios_[a-z0-9_]+").expect("regex");
    // In the expressions and in the descriptions that point at a metric.
    let used: BTreeSet<&str> = names.find_iter(&text).map(|m| m.as_str()).collect();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            ALL_METRICS.contains(&name) || ALL_METRICS.contains(&base),
            "the alert rules use {name}, which is not a metric we export"
        );
    }
}

#[test]
fn prediction_series_follow_the_predictor_in_use_and_bound_tenants() {
    let reg = MetricsRegistry::new();
    let m = reg.register_job("orders", Some(&strings(&["3", "7"])));
    m.set_hotness([("3", 2.0), ("7", 1.0), ("99", 5.0), ("98", 0.5)]);
    m.set_predictor_in_use("model");
    m.set_predictor_in_use("heuristic");
    m.set_prediction_error("model", f64::NAN);
    let text = reg.encode();
    assert!(
        text.contains("helios_tenant_predicted_hotness{job=\"orders\",tenant=\"3\"} 2.0"),
        "{text}"
    );
    assert!(
        text.contains("helios_tenant_predicted_hotness{job=\"orders\",tenant=\"_all\"} 5.5"),
        "{text}"
    );
    assert!(
        !text.contains("tenant=\"99\""),
        "unlisted tenants get no series"
    );
    assert!(
        text.contains("helios_predictor_in_use{job=\"orders\",predictor=\"heuristic\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("helios_predictor_in_use{job=\"orders\",predictor=\"model\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("helios_prediction_error{"),
        "NaN errors are not recorded"
    );
    reg.unregister_job("orders");
    assert!(!reg.encode().contains("predict"), "series go with the job");
}
