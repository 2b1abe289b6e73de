//! Passwords never appear in any answer.

use super::*;

// ---------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn passwords_never_appear_in_responses() {
    let (control, router) = app(Some(TOKEN));
    let spec = valid_with(
        "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
        "dsn = \"host=127.0.0.1 user=postgres password=hunter2 dbname=app\"",
    )
    .replace(
        "host=127.0.0.1 port=5433 user=postgres dbname=replica",
        "postgresql://postgres:hunter2@127.0.0.1:5433/replica?password=hunter2",
    );
    let mut answers = vec![submit(&router, Some(TOML), spec.clone(), Some(TOKEN)).await];
    assert_eq!(answers[0].status, StatusCode::CREATED);
    // The fake keeps the password (it is the manager's to use).
    assert!(control.jobs.lock().unwrap()["t"]
        .spec
        .source
        .dsn
        .expose()
        .contains("hunter2"));

    for (method, uri) in [
        ("GET", "/v1/jobs/t"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs/t/pause"),
        ("POST", "/v1/jobs/t/resume"),
        ("GET", "/v1/tenants/3"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
    ] {
        let answer = call(&router, method, uri, Some(TOKEN)).await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {uri}");
        answers.push(answer);
    }
    let shown = answers[1].json();
    assert_eq!(
        shown["spec"]["source"]["dsn"],
        "host=127.0.0.1 user=postgres password=*** dbname=app"
    );
    assert_eq!(
        shown["spec"]["sinks"][0]["dsn"],
        "postgresql://postgres:***@127.0.0.1:5433/replica?password=***"
    );
    assert_eq!(
        shown["reason"],
        "could not connect to host=127.0.0.1 user=postgres password=*** dbname=app"
    );

    // Errors about the same or slightly broken documents.
    answers.push(submit(&router, Some(TOML), spec.clone(), Some(TOKEN)).await);
    let leaky_bodies: Vec<(&str, String)> = vec![
        (
            TOML,
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = \"host=h password=hunter2\"",
            ),
        ),
        (
            TOML,
            valid_with("name = \"t\"", "name = \"postgresql://u:hunter2@h/db\""),
        ),
        (
            TOML,
            valid_with("name = \"t\"", "name = \"x password='hunter2 y'\""),
        ),
        (
            TOML,
            valid_with("slot = \"slot_t\"", "slot = \"password=hunter2\""),
        ),
        (
            TOML,
            valid_with("include = [3, 7]", "include = \"postgres://u:hunter2@h\""),
        ),
        (
            TOML,
            valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
                "dsn = \"host=h password='hunter2\"",
            ),
        ),
        (
            TOML,
            valid_with("kind = \"postgres\"", "kind = \"password=hunter2\""),
        ),
        (TOML, format!("{spec}\nsecret = \"password=hunter2\"")),
        (TOML, format!("dsn = \"password=hunter2\n{spec}")),
        (
            JSON,
            String::from_utf8(json_with(|v| {
                v["sinks"][0]["batch_max_rows"] = json!("host=h password=hunter2")
            }))
            .unwrap(),
        ),
        (
            JSON,
            String::from_utf8(json_with(|v| {
                v["tenants"]["include"] = json!(["a", "postgresql://x:hunter2@h", "a"])
            }))
            .unwrap(),
        ),
        (
            JSON,
            r#"{"name": "postgresql://u:hunter2@h/db"}"#.to_owned(),
        ),
    ];
    for (content_type, body) in leaky_bodies {
        let answer = submit(&router, Some(content_type), body.clone(), Some(TOKEN)).await;
        assert!(answer.status.is_client_error(), "{body}: {}", answer.status);
        answer.error();
        answers.push(answer);
    }
    answers.push(
        submit(
            &router,
            Some(TOML),
            valid_named(UNAVAILABLE_JOB).replace("dbname=app", "password=hunter2"),
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(
        answers.last().unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    answers.push(call(&router, "GET", "/v1/jobs/password=hunter2", Some(TOKEN)).await);
    answers.push(call(&router, "GET", "/password=hunter2", Some(TOKEN)).await);

    for answer in &answers {
        let text = answer.text();
        assert!(!text.contains("hunter2"), "{}: {text}", answer.status);
        for value in answer.headers.values() {
            assert!(!value.to_str().unwrap_or_default().contains("hunter2"));
        }
    }
}

#[test]
fn redact_text_hides_passwords_anywhere() {
    let cases = [
        ("no secret here", "no secret here"),
        (
            "host=h password=hunter2 dbname=x",
            "host=h password=*** dbname=x",
        ),
        (
            "invalid type: string \"host=h password=hunter2\", expected usize",
            "invalid type: string \"host=h password=***",
        ),
        (
            "`postgresql://u:hunter2@h/db` is not a valid job name",
            "`postgresql://u:***@h/db` is not a valid job name",
        ),
        (
            "postgres://u:hunter2@h and password=hunter2",
            "postgres://u:***@h and password=***",
        ),
        (
            "see POSTGRESQL://u:hunter2@h/db?password=hunter2",
            "see POSTGRESQL://u:***@h/db?password=***",
        ),
        ("x password='hunter2 y' z", "x password=*** z"),
        ("x password='hunter2", "x password=***"),
        (
            "unknown sink kind `password=hunter2`, known kinds",
            "unknown sink kind `password=***",
        ),
        ("\"PassWord = hunter2\"", "\"PassWord = ***"),
        ("mypassword=hunter2 x", "mypassword=*** x"),
        ("password='a\\'hunter2' x", "password=*** x"),
        ("password=é\\éhunter2", "password=***"),
        ("passwordless=1 password", "passwordless=1 password"),
        (
            "postgresql://h/db?password=hunter2&sslmode=off x",
            "postgresql://h/db?password=***&sslmode=off x",
        ),
        (
            "sslkey=/k sslpassword='hunter2 2' x",
            "sslkey=/k sslpassword=*** x",
        ),
        (
            "postgresql://h/db?sslpassword=hunter2&sslmode=require x",
            "postgresql://h/db?sslpassword=***&sslmode=require x",
        ),
    ];
    for (text, expected) in cases {
        let redacted = redact_text(text);
        assert!(redacted.starts_with(expected), "{text:?} -> {redacted:?}");
        assert!(!redacted.contains("hunter2"), "{text:?} -> {redacted:?}");
    }
    assert_eq!(encode_path_segment("a-b_c.d~9"), "a-b_c.d~9");
    assert_eq!(encode_path_segment("a b/é"), "a%20b%2F%C3%A9");
}
