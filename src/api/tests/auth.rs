//! The bearer token on every `/v1` route.

use super::*;

// ---------------------------------------------------------------------------
// Bearer token

fn protected_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| is_protected(path))
}

async fn call_route(router: &Router, method: &str, path: &str, auth: Option<&str>) -> Answer {
    let uri = path
        .replace("{id}", "known")
        .replace("{tenant}", "3")
        .replace("{table}", "public.orders");
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    let body = if (method, path) == ("POST", "/v1/jobs") {
        builder = builder.header(header::CONTENT_TYPE, TOML);
        Body::from(valid_named("fresh"))
    } else if (method, path) == ("PUT", "/v1/jobs/{id}") {
        builder = builder.header(header::CONTENT_TYPE, TOML);
        Body::from(valid_named("known"))
    } else if (method, path) == ("POST", "/v1/exports") {
        builder = builder.header(header::CONTENT_TYPE, JSON);
        Body::from(r#"{"tenant": "3", "table": "public.orders", "output": "/tmp/x"}"#)
    } else if (method, path) == ("PUT", "/v1/retention-policies") {
        builder = builder.header(header::CONTENT_TYPE, JSON);
        Body::from(r#"{"tenant": "3", "table": "public.orders", "days": 7}"#)
    } else if (method, path) == ("POST", "/v1/jobs/{id}/resync") {
        builder = builder.header(header::CONTENT_TYPE, JSON);
        Body::from(r#"{"tables": ["public.orders"]}"#)
    } else if (method, path) == ("POST", "/v1/access") {
        builder = builder.header(header::CONTENT_TYPE, JSON);
        Body::from(r#"{"events": [{"tenant": 3, "table": "public.orders", "key": 1}]}"#)
    } else {
        Body::empty()
    };
    send(router, builder.body(body).unwrap()).await
}

#[tokio::test]
async fn every_v1_route_requires_the_token() {
    assert_eq!(protected_routes().count(), 18);
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some("Bearer ".to_owned()),
        Some("Bearer".to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some(format!("Token {TOKEN}")),
    ];
    for (method, path) in protected_routes() {
        let (control, router) = app(Some(TOKEN));
        let initial = if path.ends_with("/resume") {
            JobState::Paused
        } else {
            JobState::Streaming
        };
        control.insert(spec_named("known"), initial);
        for auth in &wrong {
            let answer = call_route(&router, method, path, auth.as_deref()).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(
                answer.headers.get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer"
            );
            assert_eq!(
                answer.json(),
                json!({"error": "missing or invalid bearer token"})
            );
        }
        // Nothing reached the manager.
        assert_eq!(control.jobs.lock().unwrap().len(), 1);
        assert_eq!(control.jobs.lock().unwrap()["known"].state, initial);
        for auth in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN}")] {
            let answer = call_route(&router, method, path, Some(&auth)).await;
            assert!(
                answer.status.is_success(),
                "{method} {path} {auth}: {} {}",
                answer.status,
                answer.text()
            );
            // Undo the effect so the next accepted request succeeds too.
            control.jobs.lock().unwrap().remove("fresh");
            control.insert(spec_named("known"), initial);
        }
    }
}

#[tokio::test]
async fn open_routes_need_no_token() {
    let (_, router) = app(Some(TOKEN));
    for (method, path) in ROUTES.iter().filter(|(_, path)| !is_protected(path)) {
        for auth in [None, Some("Bearer wrong")] {
            let answer = call_route(&router, method, path, auth).await;
            assert_eq!(answer.status, StatusCode::OK, "{method} {path} {auth:?}");
        }
    }
}

#[tokio::test]
async fn without_a_configured_token_v1_is_open() {
    let (_, router) = app(None);
    assert_eq!(
        call(&router, "GET", "/v1/jobs", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&router, "GET", "/v1/jobs", Some("anything"))
            .await
            .status,
        StatusCode::OK
    );
    // An empty configured token lets nothing through.
    let (_, router) = app(Some(""));
    let answer = send(
        &router,
        Request::get("/v1/jobs")
            .header(header::AUTHORIZATION, "Bearer ")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn token_parsing_and_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(constant_time_eq(b"", b""));
    let token = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        presented_token(&headers).map(|t| String::from_utf8(t.to_vec()).unwrap())
    };
    assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
    assert_eq!(token("BEARER abc").as_deref(), Some("abc"));
    assert_eq!(token("Bearer  abc ").as_deref(), Some("abc"));
    assert_eq!(token("Basic abc"), None);
    assert_eq!(token("Bearerabc"), None);
    let mut headers = HeaderMap::new();
    headers.append(header::AUTHORIZATION, "Bearer a".parse().unwrap());
    headers.append(header::AUTHORIZATION, "Bearer a".parse().unwrap());
    assert_eq!(presented_token(&headers), None);
    assert!(is_protected("/v1/jobs") && is_protected("/v1") && is_protected("/v1/"));
    assert!(!is_protected("/v10") && !is_protected("/healthz") && !is_protected("/metrics"));
}

const READ_TOKEN: &str = "r3ad-only";

fn app_with_read_token() -> (Arc<FakeControl>, Router) {
    let control = Arc::new(FakeControl::default());
    let router = router(
        control.clone(),
        ApiTokens {
            admin: Some(TOKEN.to_owned()),
            read_only: Some(READ_TOKEN.to_owned()),
        },
    );
    (control, router)
}

#[tokio::test]
async fn the_read_only_token_reads_every_route_and_changes_nothing() {
    let reader = format!("Bearer {READ_TOKEN}");
    let mut reads = 0;
    for (method, path) in protected_routes() {
        let (control, router) = app_with_read_token();
        let initial = if path.ends_with("/resume") {
            JobState::Paused
        } else {
            JobState::Streaming
        };
        control.insert(spec_named("known"), initial);
        let answer = call_route(&router, method, path, Some(&reader)).await;
        if method == "GET" {
            reads += 1;
            assert!(
                answer.status.is_success(),
                "{method} {path}: {} {}",
                answer.status,
                answer.text()
            );
        } else {
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
            let error = answer.json()["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                error.contains("read-only token may not") && error.contains(method),
                "{error}"
            );
            // Nothing reached the manager.
            assert_eq!(control.jobs.lock().unwrap().len(), 1);
            assert_eq!(control.jobs.lock().unwrap()["known"].state, initial);
            // The admin token may.
            let answer = call_route(&router, method, path, Some(&format!("Bearer {TOKEN}"))).await;
            assert!(
                answer.status.is_success(),
                "{method} {path}: {}",
                answer.status
            );
        }
    }
    assert!(reads >= 5, "{reads}");
    // A near miss of either token is no token.
    let (_, router) = app_with_read_token();
    for wrong in [format!("{READ_TOKEN}x"), "r3ad".to_owned()] {
        let answer = call(&router, "GET", "/v1/jobs", Some(&wrong)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
}

#[tokio::test]
async fn a_read_only_token_without_an_admin_token_opens_nothing_more() {
    // Routes are open without an admin token; a read-only one then restricts no one.
    let control = Arc::new(FakeControl::default());
    let router = router(
        control.clone(),
        ApiTokens {
            admin: None,
            read_only: Some(READ_TOKEN.to_owned()),
        },
    );
    control.insert(spec_named("known"), JobState::Streaming);
    let answer = call(&router, "POST", "/v1/jobs/known/pause", Some(READ_TOKEN)).await;
    assert!(answer.status.is_success(), "{}", answer.status);
}
