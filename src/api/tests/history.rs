//! The history routes: as-of query parameters, exports and retention bodies.

use super::*;

#[tokio::test]
async fn as_of_parses_lsns_and_rfc3339_times() {
    let (_, router) = app(None);
    let answer = call(
        &router,
        "GET",
        "/v1/tenants/7/tables/app.orders/rows?system_time=0/16B3748&valid_time=2026-03-01T00:00:00Z&job=j",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["system_time"], "Some(Lsn(23803720))");
    // 2026-03-01 is 9556 days after 2000-01-01.
    assert_eq!(
        body["valid_time"],
        format!("Some(Micros({}))", 9556i64 * 86_400_000_000)
    );
    assert_eq!(body["job"], "j");
    assert_eq!(body["table"], "app.orders");
}

#[tokio::test]
async fn as_of_key_values_keep_their_order_and_decoding() {
    let (_, router) = app(None);
    let answer = call(
        &router,
        "GET",
        "/v1/tenants/7/tables/app.orders/rows?key=a%2Cb%20c&key=42",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["rows"], serde_json::json!([["a,b c", "42"]]));
}

#[tokio::test]
async fn as_of_rejects_malformed_and_unknown_parameters() {
    let (_, router) = app(None);
    for (query, field) in [
        ("system_time=yesterday", "system_time"),
        ("valid_time=2026-13-01T00:00:00Z", "valid_time"),
        ("system_time=1/2/3", "system_time"),
        ("as_of=now", "as_of"),
        ("system_time=0/1&system_time=0/2", "system_time"),
    ] {
        let uri = format!("/v1/tenants/7/tables/app.orders/rows?{query}");
        let answer = call(&router, "GET", &uri, None).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            answer.text()
        );
        assert_eq!(answer.error().field.as_deref(), Some(field), "{query}");
    }
}

#[tokio::test]
async fn as_of_maps_missing_and_future_to_404_and_422() {
    let (_, router) = app(None);
    let answer = call(
        &router,
        "GET",
        "/v1/tenants/nobody/tables/app.orders/rows",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = call(
        &router,
        "GET",
        "/v1/tenants/future/tables/app.orders/rows",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error().field.as_deref(), Some("system_time"));
}

#[tokio::test]
async fn export_bodies_are_checked_field_by_field() {
    let (_, router) = app(None);
    let cases = [
        (
            r#"{"tenant": "7", "table": "app.orders"}"#,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            r#"{"tenant": "7", "table": "app.orders", "output": "/x", "colour": 1}"#,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            r#"{"tenant": 7, "table": "app.orders", "output": "/x"}"#,
            StatusCode::BAD_REQUEST,
            Some("tenant"),
        ),
        (
            r#"{"tenant": "7", "table": "app.orders", "output": "/x", "from": "soon"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("from"),
        ),
        (
            r#"{"tenant": "7", "table": "app.orders", "output": " "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("output"),
        ),
        ("not json", StatusCode::BAD_REQUEST, None),
    ];
    for (body, status, field) in cases {
        let builder = request("POST", "/v1/exports", None).header(header::CONTENT_TYPE, JSON);
        let answer = send(&router, builder.body(Body::from(body)).unwrap()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text());
        if let Some(field) = field {
            assert_eq!(answer.error().field.as_deref(), Some(field), "{body}");
        }
    }
    let ok = r#"{"tenant": "7", "table": "app.orders", "output": "/x", "from": "0/1", "to": "2026-01-01T00:00:00Z"}"#;
    let builder = request("POST", "/v1/exports", None).header(header::CONTENT_TYPE, JSON);
    let answer = send(&router, builder.body(Body::from(ok)).unwrap()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    let answer = call(&router, "GET", "/v1/exports/nope", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn retention_policies_round_trip_and_reject_negative_days() {
    let (control, router) = app(None);
    let put = |body: &'static str| {
        let builder =
            request("PUT", "/v1/retention-policies", None).header(header::CONTENT_TYPE, JSON);
        builder.body(Body::from(body)).unwrap()
    };
    let answer = send(
        &router,
        put(r#"{"tenant": "7", "table": "app.orders", "days": -1}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().field.as_deref(), Some("days"));
    let answer = send(
        &router,
        put(r#"{"tenant": "7", "table": "app.orders", "days": 30}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(control.policies.lock().unwrap().len(), 1);
    let answer = call(&router, "GET", "/v1/retention-policies", None).await;
    assert_eq!(answer.json()["policies"][0]["days"], 30);
}
