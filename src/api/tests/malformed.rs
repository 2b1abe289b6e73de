//! Malformed submissions: each gets a 4xx whose error names the problem.

use super::*;

// ---------------------------------------------------------------------------
// Malformed bodies

/// One malformed submission and what its answer must say.
struct Bad {
    what: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
    /// Must occur in `error`.
    says: &'static str,
}

fn bad(
    what: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
    says: &'static str,
) -> Bad {
    Bad {
        what,
        content_type,
        body: body.into(),
        status,
        field,
        says,
    }
}

fn malformed_bodies() -> Vec<Bad> {
    let source_section = "[source]\ndsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\npublication = \"pub_t\"\nslot = \"slot_t\"\n";
    let mut huge = valid_named("huge").into_bytes();
    huge.extend(std::iter::repeat_n(b'#', MAX_BODY_BYTES));
    huge.push(b'\n');
    vec![
        // wrong types
        bad(
            "batch_max_rows string",
            Some(TOML),
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = \"x\"",
            ),
            400,
            Some("sinks[0].batch_max_rows"),
            "invalid type",
        ),
        bad(
            "include integer",
            Some(TOML),
            valid_with("include = [3, 7]", "include = 5"),
            400,
            Some("tenants.include"),
            "invalid type",
        ),
        bad(
            "name integer",
            Some(TOML),
            valid_with("name = \"t\"", "name = 3"),
            400,
            Some("name"),
            "invalid type",
        ),
        bad(
            "name null (JSON)",
            Some(JSON),
            json_with(|v| v["name"] = Value::Null),
            400,
            Some("name"),
            "invalid type",
        ),
        bad(
            "include element bool (JSON)",
            Some(JSON),
            json_with(|v| v["tenants"]["include"] = json!([3, true])),
            400,
            Some("tenants.include[1]"),
            "tenant id",
        ),
        bad(
            "tables a string (JSON)",
            Some(JSON),
            json_with(|v| v["tables"] = json!("x")),
            400,
            Some("tables"),
            "invalid type",
        ),
        // missing fields
        bad(
            "missing name",
            Some(TOML),
            valid_with("name = \"t\"\n", ""),
            400,
            Some("name"),
            "missing field `name`",
        ),
        bad(
            "missing source",
            Some(TOML),
            valid_with(source_section, ""),
            400,
            Some("source"),
            "missing field `source`",
        ),
        bad(
            "missing source.dsn",
            Some(TOML),
            valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\n",
                "",
            ),
            400,
            Some("source.dsn"),
            "missing field `dsn`",
        ),
        bad(
            "missing slot",
            Some(TOML),
            valid_with("slot = \"slot_t\"\n", ""),
            400,
            Some("source.slot"),
            "missing field `slot`",
        ),
        bad(
            "missing tables",
            Some(TOML),
            valid_with("[[tables]]\nname = \"public.orders\"\n", ""),
            400,
            Some("tables"),
            "missing field `tables`",
        ),
        bad(
            "missing sinks (JSON)",
            Some(JSON),
            json_with(|v| {
                v.as_object_mut().unwrap().remove("sinks");
            }),
            400,
            Some("sinks"),
            "missing field `sinks`",
        ),
        bad(
            "missing sinks[0].dsn",
            Some(TOML),
            valid_with(
                "dsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
                "",
            ),
            400,
            Some("sinks[0].dsn"),
            "missing field `dsn`",
        ),
        // unknown values and keys
        bad(
            "unknown sink kind",
            Some(TOML),
            valid_with("kind = \"postgres\"", "kind = \"kafka\""),
            400,
            Some("sinks[0].kind"),
            "unknown sink kind `kafka`",
        ),
        bad(
            "unknown top-level key",
            Some(TOML),
            valid_with("name = \"t\"", "name = \"t\"\nverbose = true"),
            400,
            Some("verbose"),
            "unknown field `verbose`",
        ),
        bad(
            "unknown nested key",
            Some(TOML),
            valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\npasswd = \"x\""),
            400,
            Some("source.passwd"),
            "unknown field `passwd`",
        ),
        bad(
            "unknown key in a sink (JSON)",
            Some(JSON),
            json_with(|v| v["sinks"][0]["batch"] = json!(3)),
            400,
            Some("sinks[0].batch"),
            "unknown field `batch`",
        ),
        // values that parse but are not acceptable
        bad(
            "empty include",
            Some(TOML),
            valid_with("include = [3, 7]", "include = []"),
            422,
            Some("tenants.include"),
            "at least one tenant",
        ),
        bad(
            "bad slot name",
            Some(TOML),
            valid_with("slot = \"slot_t\"", "slot = \"Bad-Slot\""),
            422,
            Some("source.slot"),
            "not a valid replication slot name",
        ),
        bad(
            "duplicate tables",
            Some(TOML),
            valid_with(
                "[[tables]]\nname = \"public.orders\"",
                "[[tables]]\nname = \"public.orders\"\n[[tables]]\nname = \"public.orders\"",
            ),
            422,
            Some("tables[1].name"),
            "duplicate table",
        ),
        bad(
            "empty tables (JSON)",
            Some(JSON),
            json_with(|v| v["tables"] = json!([])),
            422,
            Some("tables"),
            "at least one table",
        ),
        bad(
            "batch_max_rows 0",
            Some(TOML),
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = 0",
            ),
            422,
            Some("sinks[0].batch_max_rows"),
            "between 1 and",
        ),
        bad(
            "sink dsn not a dsn",
            Some(TOML),
            valid_with(
                "host=127.0.0.1 port=5433 user=postgres dbname=replica",
                "not a dsn",
            ),
            422,
            Some("sinks[0].dsn"),
            "missing `=`",
        ),
        bad(
            "bad job name",
            Some(TOML),
            valid_with("name = \"t\"", "name = \"Big Job\""),
            422,
            Some("name"),
            "not a valid job name",
        ),
        // the body as a whole
        bad(
            "huge body",
            Some(TOML),
            huge,
            413,
            None,
            "larger than 1048576 bytes",
        ),
        bad(
            "invalid UTF-8",
            Some(TOML),
            b"name = \"\xff\xfe\"\n".to_vec(),
            400,
            None,
            "body is not valid UTF-8",
        ),
        bad(
            "wrong content type",
            Some("application/xml"),
            VALID,
            415,
            None,
            "application/json, application/toml or text/toml",
        ),
        bad(
            "form content type (curl's default)",
            Some("application/x-www-form-urlencoded"),
            VALID,
            415,
            None,
            "unsupported content type `application/x-www-form-urlencoded`",
        ),
        bad(
            "no content type",
            None,
            VALID,
            415,
            None,
            "missing Content-Type",
        ),
        bad(
            "non-UTF-8 charset",
            Some("application/json; charset=latin1"),
            "{}",
            415,
            None,
            "unsupported charset `latin1`",
        ),
        bad(
            "JSON syntax error",
            Some(JSON),
            r#"{"name" "t"}"#,
            400,
            None,
            "expected `:`",
        ),
        bad(
            "JSON cut short",
            Some(JSON),
            r#"{"name": "t", "source": "#,
            400,
            Some("source"),
            "EOF while parsing",
        ),
        bad(
            "JSON trailing garbage",
            Some(JSON),
            {
                let mut b = json_with(|_| {});
                b.extend_from_slice(b" x");
                b
            },
            400,
            None,
            "trailing characters",
        ),
        bad(
            "JSON document not an object",
            Some(JSON),
            "42",
            400,
            None,
            "invalid type: integer `42`, expected struct JobSpec",
        ),
        bad(
            "TOML syntax error",
            Some(TOML),
            "name = \n",
            400,
            None,
            "line 1",
        ),
        bad(
            "empty JSON body",
            Some(JSON),
            "",
            400,
            None,
            "EOF while parsing",
        ),
        bad(
            "empty TOML body",
            Some(TOML),
            "",
            400,
            Some("name"),
            "missing field `name`",
        ),
    ]
}

#[tokio::test]
async fn malformed_bodies_are_refused_naming_the_problem() {
    let (control, router) = app(Some(TOKEN));
    let cases = malformed_bodies();
    assert!(cases.len() >= 20);
    for case in cases {
        let answer = submit(&router, case.content_type, case.body, Some(TOKEN)).await;
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{}: {}",
            case.what,
            answer.text()
        );
        let error = answer.error();
        assert!(
            error.error.contains(case.says),
            "{}: error {:?} does not say {:?}",
            case.what,
            error.error,
            case.says
        );
        assert_eq!(error.field.as_deref(), case.field, "{}: field", case.what);
        if let Some(field) = case.field {
            assert!(error.error.contains(field), "{}: {error:?}", case.what);
        }
    }
    assert!(control.jobs.lock().unwrap().is_empty());
    // The server keeps serving.
    let answer = submit(&router, Some(TOML), VALID, Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let answer = submit(
        &router,
        Some(JSON),
        json_with(|v| v["name"] = json!("t-json")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(control.jobs.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn accepted_content_types() {
    let (_, router) = app(None);
    for (i, content_type) in [
        "application/toml",
        "text/toml",
        "TEXT/TOML; charset=UTF-8",
        "application/toml;charset=\"utf-8\"",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = submit(
            &router,
            Some(content_type),
            valid_named(&format!("t{i}")),
            None,
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            answer.text()
        );
    }
    let answer = submit(
        &router,
        Some("application/json; charset=utf-8"),
        json_with(|v| v["name"] = json!("j")),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    // A TOML document sent as JSON is a JSON syntax error, not guessed at.
    let answer = submit(&router, Some(JSON), valid_named("x"), None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    for content_type in ["text/plain", "application/yaml", "json", ""] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        assert!(spec_format(&headers).is_err(), "{content_type}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert_eq!(spec_format(&headers).unwrap(), SpecFormat::Json);
}
