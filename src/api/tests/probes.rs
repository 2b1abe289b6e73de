//! Health, readiness, metrics, and serving over TCP.

use super::*;

// ---------------------------------------------------------------------------
// Health, readiness, metrics

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (_, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/metrics", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers.get(header::CONTENT_TYPE).unwrap(),
        crate::metrics::CONTENT_TYPE
    );
    assert_eq!(answer.text(), METRICS);
}

#[tokio::test]
async fn readyz_follows_the_metadata_store_and_healthz_is_always_ok() {
    let (control, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        json!({"metadata_store": true, "jobs_running": 0, "jobs_failed": 0})
    );
    control.store_down.store(true, Ordering::SeqCst);
    control.insert(spec_named("broken"), JobState::Failed);
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json(),
        json!({"metadata_store": false, "jobs_running": 0, "jobs_failed": 1})
    );
    let answer = call(&router, "GET", "/healthz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"status": "ok"}));
}

// ---------------------------------------------------------------------------
// serve

#[tokio::test]
async fn serve_answers_over_tcp_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, router) = app(Some(TOKEN));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, None, router, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
}
