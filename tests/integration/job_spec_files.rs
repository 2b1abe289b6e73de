//! The example jobs in `dataflows/*.toml` against `schemas/job.schema.json`
//! and the Rust parser, and invalid documents that both must reject.

use std::path::{Path, PathBuf};

use helios_repl::control::job_spec::*;
use serde_json::Value;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema_validator() -> jsonschema::Validator {
    let path = manifest_dir().join("schemas/job.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("schema is not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::new(&schema).expect("schema compiles")
}

fn example_files() -> Vec<PathBuf> {
    let dir = manifest_dir().join("dataflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn toml_to_json(doc: &str) -> Value {
    toml::from_str::<Value>(doc).expect("document is TOML")
}

/// Schema errors of `instance`, one per line (empty when valid).
fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> String {
    validator
        .iter_errors(instance)
        .map(|e| format!("  {}: {e}", e.instance_path))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn expected_example_files_exist() {
    let names: Vec<String> = example_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "all_tenants.toml",
        "demo.toml",
        "tenants_3_7.toml",
        "tiers_to_nats.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn example_files_match_schema() {
    let validator = schema_validator();
    for path in example_files() {
        let doc = std::fs::read_to_string(&path).unwrap();
        let instance = toml_to_json(&doc);
        let errors = schema_errors(&validator, &instance);
        assert!(
            errors.is_empty(),
            "{} does not match the schema:\n{errors}",
            path.display()
        );
    }
}

#[test]
fn example_files_parse_and_validate() {
    for path in example_files() {
        let doc = std::fs::read_to_string(&path).unwrap();
        let spec =
            JobSpec::from_toml_str(&doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        spec.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The same document as JSON (the REST API form) gives the same spec.
        let json = toml_to_json(&doc).to_string();
        let from_json = JobSpec::from_json_str(&json)
            .unwrap_or_else(|e| panic!("{} as JSON: {e}", path.display()));
        assert_eq!(from_json, spec, "{}", path.display());
        // And what we write back reads back.
        let written = spec.to_toml_string();
        assert_eq!(
            JobSpec::from_toml_str(&written).unwrap(),
            spec,
            "{}",
            path.display()
        );
    }
}

#[test]
fn serialized_specs_match_schema() {
    let validator = schema_validator();
    for path in example_files() {
        let spec = JobSpec::from_toml_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let instance = serde_json::to_value(&spec).unwrap();
        let errors = schema_errors(&validator, &instance);
        assert!(
            errors.is_empty(),
            "serialized {} does not match the schema:\n{errors}",
            path.display()
        );
        let toml_instance = toml_to_json(&spec.to_toml_string());
        assert!(validator.is_valid(&toml_instance), "{}", path.display());
    }
}

const BASE: &str = helios_repl::control::job_spec::MINIMAL_SPEC;

fn base_with(from: &str, to: &str) -> String {
    assert_eq!(BASE.matches(from).count(), 1, "{from}");
    BASE.replace(from, to)
}

#[test]
fn base_document_is_valid_for_both() {
    assert!(schema_validator().is_valid(&toml_to_json(BASE)));
    JobSpec::from_toml_str(BASE).unwrap();
    let pattern = base_with(
        "name = \"public.orders\"",
        "name = \"public.order_*\"\nexclude = [\"order_log\", \"public.order_?x\"]",
    );
    assert!(schema_validator().is_valid(&toml_to_json(&pattern)));
    JobSpec::from_toml_str(&pattern).unwrap();
    let schemas = base_with(
        "name = \"public.orders\"",
        "name = \"app_*.orders\"\nexclude = [\"app_test.*\", \"*_old.orders\"]",
    );
    let validator = schema_validator();
    let instance = toml_to_json(&schemas);
    assert!(
        validator.is_valid(&instance),
        "{}",
        schema_errors(&validator, &instance)
    );
    JobSpec::from_toml_str(&schemas).unwrap();
}

#[test]
fn invalid_documents_are_rejected_by_schema_and_parser() {
    let source_dsn = "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing source dsn", base_with(source_dsn, ""), "source.dsn"),
        (
            "empty source dsn",
            base_with(source_dsn, "dsn = \"\"\n"),
            "source.dsn",
        ),
        (
            "unknown sink kind",
            base_with("kind = \"postgres\"", "kind = \"kafka\""),
            "sinks[0].kind",
        ),
        (
            "missing sink kind",
            base_with("kind = \"postgres\"\n", ""),
            "sinks[0].kind",
        ),
        (
            "batch_max_rows of the wrong type",
            base_with("kind = \"postgres\"", "kind = \"postgres\"\nbatch_max_rows = \"many\""),
            "sinks[0].batch_max_rows",
        ),
        (
            "batch_max_rows = 0",
            base_with("kind = \"postgres\"", "kind = \"postgres\"\nbatch_max_rows = 0"),
            "sinks[0].batch_max_rows",
        ),
        (
            "batch_max_rows too large",
            base_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = 1000001",
            ),
            "sinks[0].batch_max_rows",
        ),
        (
            "unknown key in source",
            base_with("slot = \"slot_t\"", "slot = \"slot_t\"\npasswd = \"x\""),
            "source.passwd",
        ),
        (
            "unknown top-level key",
            base_with("name = \"t\"", "name = \"t\"\nmode = \"fast\""),
            "mode",
        ),
        (
            "bad slot name",
            base_with("slot = \"slot_t\"", "slot = \"Slot-T\""),
            "source.slot",
        ),
        (
            "receive buffer too small",
            base_with(
                "slot = \"slot_t\"",
                "slot = \"slot_t\"\nreceive_buffer_kib = 8",
            ),
            "source.receive_buffer_kib",
        ),
        (
            "receive buffer too large",
            base_with(
                "slot = \"slot_t\"",
                "slot = \"slot_t\"\nreceive_buffer_kib = 65537",
            ),
            "source.receive_buffer_kib",
        ),
        (
            "no row memory for the version books",
            base_with("[tenants]", "[history]\nrow_memory_mib = 0\n[tenants]"),
            "history.row_memory_mib",
        ),
        (
            "row memory past 1 TiB",
            base_with("[tenants]", "[history]\nrow_memory_mib = 1048577\n[tenants]"),
            "history.row_memory_mib",
        ),
        (
            "bad publication name",
            base_with("publication = \"pub_t\"", "publication = \"9pub\""),
            "source.publication",
        ),
        (
            "bad job name",
            base_with("name = \"t\"", "name = \"Tenants 3\""),
            "name",
        ),
        (
            "unqualified table name",
            base_with("name = \"public.orders\"", "name = \"orders\""),
            "tables[0].name",
        ),
        (
            "quoted table name",
            base_with("name = \"public.orders\"", "name = '\"public\".orders'"),
            "tables[0].name",
        ),
        (
            "a character no schema pattern takes",
            base_with("name = \"public.orders\"", "name = \"pu-b*.orders\""),
            "tables[0].name",
        ),
        (
            "a pattern longer than an identifier",
            base_with(
                "name = \"public.orders\"",
                &format!("name = \"public.{}*\"", "o".repeat(63)),
            ),
            "tables[0].name",
        ),
        (
            "exclude beside a table name",
            base_with(
                "name = \"public.orders\"",
                "name = \"public.orders\"\nexclude = [\"x\"]",
            ),
            "tables[0].exclude",
        ),
        (
            "empty include list",
            base_with("include = [3, 7]", "include = []"),
            "tenants.include",
        ),
        (
            "duplicate tenant ids",
            base_with("include = [3, 7]", "include = [3, 7, 3]"),
            "tenants.include",
        ),
        (
            "include is neither \"all\" nor a list",
            base_with("include = [3, 7]", "include = \"everyone\""),
            "tenants.include",
        ),
        (
            "no tables",
            base_with("[[tables]]\nname = \"public.orders\"\n", "")
                .replace("name = \"t\"\n", "name = \"t\"\ntables = []\n"),
            "tables",
        ),
        (
            "no sinks",
            base_with(
                "[[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
                "",
            )
            .replace("name = \"t\"\n", "name = \"t\"\nsinks = []\n"),
            "sinks",
        ),
        (
            "missing include",
            base_with("include = [3, 7]\n", ""),
            "tenants.include",
        ),
    ];

    let validator = schema_validator();
    for (what, doc, field) in cases {
        let instance = toml_to_json(&doc);
        assert!(
            !validator.is_valid(&instance),
            "{what}: the schema accepts\n{doc}"
        );
        let err = match JobSpec::from_toml_str(&doc) {
            Ok(spec) => panic!("{what}: the parser accepts {spec:?}"),
            Err(err) => err,
        };
        assert_eq!(err.field(), field, "{what}: {err}");
        assert!(
            err.to_string().contains(field),
            "{what}: Display does not name {field}: {err}"
        );
        // The JSON form is rejected for the same field.
        let json_err = JobSpec::from_json_str(&instance.to_string()).expect_err(what);
        assert_eq!(json_err.field(), field, "{what} (JSON): {json_err}");
    }
}

#[test]
fn parser_only_rules_are_documented_in_the_schema() {
    // Uniqueness of table names and of tenant ids as text cannot be stated in
    // JSON Schema; the parser enforces them. Keep the schema saying so.
    let text = std::fs::read_to_string(manifest_dir().join("schemas/job.schema.json")).unwrap();
    assert!(text.contains("table names unique"));
    let dup_tables = base_with(
        "[[tables]]\nname = \"public.orders\"",
        "[[tables]]\nname = \"public.orders\"\n[[tables]]\nname = \"public.orders\"",
    );
    assert_eq!(
        JobSpec::from_toml_str(&dup_tables).unwrap_err().field(),
        "tables[1].name"
    );
    let dup_ids = base_with("include = [3, 7]", "include = [3, \"3\"]");
    assert_eq!(
        JobSpec::from_toml_str(&dup_ids).unwrap_err().field(),
        "tenants.include"
    );
}
