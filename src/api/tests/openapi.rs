//! The router against `schemas/openapi.yaml`: documented routes, security and answers.

use super::*;

// ---------------------------------------------------------------------------
// The router against schemas/openapi.yaml

const OPENAPI: &str = include_str!("../../../schemas/openapi.yaml");
const JOB_SCHEMA: &str = include_str!("../../../schemas/job.schema.json");
const SCHEMA_BASE: &str = "https://heliosdb.dev/schemas/";
const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn openapi() -> Value {
    serde_yaml::from_str(OPENAPI).expect("openapi.yaml parses")
}

/// (METHOD, path) of every operation in the document.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for (key, _) in item.as_object().expect("path item") {
            if HTTP_METHODS.contains(&key.as_str()) {
                routes.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> &'d Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} not documented");
    op
}

/// Follows a local `$ref` (`#/components/...`) once.
fn deref<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

/// Checks that `answer` is a documented response of the operation, with a body that
/// matches the documented media type and schema.
fn assert_documented(doc: &Value, method: &str, path: &str, answer: &Answer) {
    let op = operation(doc, method, path);
    let code = answer.status.as_u16().to_string();
    let response = op["responses"].get(&code).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered undocumented {code}: {}",
            answer.text()
        )
    });
    let response = deref(doc, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            answer.body.is_empty(),
            "{method} {path} {code}: body not documented"
        );
        return;
    };
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{method} {path} {code}: no Content-Type"));
    let media = content.get(content_type).unwrap_or_else(|| {
        panic!("{method} {path} {code}: Content-Type {content_type} not documented")
    });
    if content_type == "application/json" {
        let validator = validator_for(doc, &media["schema"]);
        let body = answer.json();
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {code}: body does not match its schema: {errors:?}\n{body:#}"
        );
    }
}

/// A validator for a schema inside the OpenAPI document: `#/components/...` refs resolve
/// against the document, `job.schema.json` against schemas/job.schema.json.
fn validator_for(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let wrapper = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}openapi.yaml"),
        "components": doc["components"],
        "allOf": [schema],
    });
    let job_schema: Value = serde_json::from_str(JOB_SCHEMA).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_resource(
            format!("{SCHEMA_BASE}job.schema.json"),
            jsonschema::Resource::from_contents(job_schema).unwrap(),
        )
        .build(&wrapper)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

#[test]
fn documented_routes_are_exactly_the_registered_ones() {
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let registered: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(registered.len(), ROUTES.len(), "ROUTES has duplicates");
    assert_eq!(documented_routes(&doc), registered);
    // Open operations say so (`security: []`); protected ones inherit the bearer scheme.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    for (method, path) in ROUTES {
        let open = operation(&doc, method, path).get("security") == Some(&json!([]));
        assert_eq!(open, !is_protected(path), "{method} {path}: security");
    }
}

#[tokio::test]
async fn every_documented_route_is_routed_and_answers_as_documented() {
    let doc = openapi();
    for (method, path) in documented_routes(&doc) {
        let (control, router) = app(Some(TOKEN));
        control.insert(spec_named("known"), JobState::Streaming);
        if path.ends_with("/resume") {
            control.insert(spec_named("known"), JobState::Paused);
        }
        let uri = path
            .replace("{id}", "known")
            .replace("{tenant}", "3")
            .replace("{table}", "public.orders");
        let json_body = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/exports") => {
                Some(r#"{"tenant": "3", "table": "public.orders", "output": "/tmp/x"}"#)
            }
            ("PUT", "/v1/retention-policies") => {
                Some(r#"{"tenant": "3", "table": "public.orders", "days": 7}"#)
            }
            ("POST", "/v1/access") => {
                Some(r#"{"events": [{"tenant": 3, "table": "public.orders", "key": 1}]}"#)
            }
            ("POST", "/v1/jobs/{id}/resync") => Some(r#"{"tables": ["public.orders"]}"#),
            _ => None,
        };
        let answer = if (method.as_str(), path.as_str()) == ("POST", "/v1/jobs") {
            submit(&router, Some(TOML), valid_named("fresh"), Some(TOKEN)).await
        } else if (method.as_str(), path.as_str()) == ("PUT", "/v1/jobs/{id}") {
            let builder = request("PUT", &uri, Some(TOKEN)).header(header::CONTENT_TYPE, TOML);
            send(
                &router,
                builder.body(Body::from(valid_named("known"))).unwrap(),
            )
            .await
        } else if let Some(body) = json_body {
            call_json(&router, &method, &uri, body).await
        } else {
            call(&router, &method, &uri, Some(TOKEN)).await
        };
        assert!(
            answer.status.is_success(),
            "{method} {uri}: {} {}",
            answer.status,
            answer.text()
        );
        assert_documented(&doc, &method, &path, &answer);
    }
}

#[tokio::test]
async fn error_answers_match_the_document() {
    let doc = openapi();
    let (control, router) = app(Some(TOKEN));
    control.insert(spec_named("known"), JobState::Streaming);
    let cases: Vec<(&str, &str, Answer)> = vec![
        (
            "GET",
            "/v1/jobs/{id}",
            call(&router, "GET", "/v1/jobs/nope", Some(TOKEN)).await,
        ),
        (
            "GET",
            "/v1/jobs",
            call(&router, "GET", "/v1/jobs", None).await,
        ),
        (
            "POST",
            "/v1/jobs/{id}/resume",
            call(&router, "POST", "/v1/jobs/known/resume", Some(TOKEN)).await,
        ),
        (
            "DELETE",
            "/v1/jobs/{id}",
            call(
                &router,
                "DELETE",
                "/v1/jobs/known?drop_slot=maybe",
                Some(TOKEN),
            )
            .await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(&router, Some(TOML), valid_named("known"), Some(TOKEN)).await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(
                &router,
                Some(TOML),
                valid_named(UNAVAILABLE_JOB),
                Some(TOKEN),
            )
            .await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(&router, Some("text/xml"), "x", Some(TOKEN)).await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(
                &router,
                Some(TOML),
                valid_with("slot_t", "Slot"),
                Some(TOKEN),
            )
            .await,
        ),
    ];
    let statuses: Vec<u16> = cases.iter().map(|(_, _, a)| a.status.as_u16()).collect();
    assert_eq!(statuses, [404, 401, 409, 400, 409, 503, 415, 422]);
    for (method, path, answer) in &cases {
        assert_documented(&doc, method, path, answer);
    }
    control.store_down.store(true, Ordering::SeqCst);
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_documented(&doc, "GET", "/readyz", &answer);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (_, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/nope", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.error().error.contains("/nope"), "{}", answer.text());

    let answer = call(&router, "GET", "/v1/nope", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.error().error.contains("GET /v1/nope"));
    // Without the token, unknown /v1 paths are refused like known ones.
    let answer = call(&router, "GET", "/v1/nope", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = call(&router, "PUT", "/v1/jobs", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let error = answer.error().error;
    assert!(
        error.contains("PUT") && error.contains("GET") && error.contains("POST"),
        "{error}"
    );
    let allow = answer.headers.get(header::ALLOW).expect("Allow header");
    let allow: BTreeSet<&str> = allow.to_str().unwrap().split(',').map(str::trim).collect();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow:?}");

    let answer = call(&router, "PATCH", "/v1/jobs/known", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.error().error.contains("DELETE"));
    // A path segment that does not decode to UTF-8 is a bad request naming the parameter.
    let answer = call(&router, "GET", "/v1/jobs/%FF", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().field.as_deref(), Some("id"));
    assert_documented(&openapi(), "GET", "/v1/jobs/{id}", &answer);
    let answer = call(&router, "POST", "/healthz", None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.error().error.contains("POST"));
}

#[test]
fn every_route_that_changes_something_documents_the_read_only_tokens_403() {
    let doc = openapi();
    for &(method, path) in ROUTES.iter().filter(|(_, p)| is_protected(p)) {
        let op = operation(&doc, method, path);
        let documented = op["responses"].get("403").is_some();
        assert_eq!(documented, method != "GET", "{method} {path}");
    }
}
