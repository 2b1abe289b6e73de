//! The job routes: submit, lifecycle, delete, tenants, error mapping.

use super::*;

// ---------------------------------------------------------------------------
// Jobs

#[tokio::test]
async fn submit_answers_201_with_location_and_409_for_a_duplicate() {
    let (control, router) = app(None);
    let answer = submit(&router, Some(TOML), valid_named("orders-eu"), None).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json(), json!({"id": "orders-eu"}));
    assert_eq!(
        answer.headers.get(header::LOCATION).unwrap(),
        "/v1/jobs/orders-eu"
    );
    assert_eq!(
        control.jobs.lock().unwrap()["orders-eu"].spec,
        spec_named("orders-eu")
    );

    let answer = submit(&router, Some(TOML), valid_named("orders-eu"), None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let error = answer.error();
    assert!(
        error.error.contains("orders-eu") && error.error.contains("exists"),
        "{error:?}"
    );
    assert_eq!(error.field, None);
}

#[tokio::test]
async fn job_lifecycle() {
    let (control, router) = app(None);
    assert_eq!(
        submit(&router, Some(TOML), valid_named("life"), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let answer = call(&router, "GET", "/v1/jobs/life", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let status: JobStatus = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(status.id, "life");
    assert_eq!(status.state, JobState::Streaming);
    assert_eq!(status.tables, ["public.orders"]);

    let answer = call(&router, "GET", "/v1/jobs", None).await;
    let list: JobList = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, "life");

    let answer = call(&router, "POST", "/v1/jobs/life/pause", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["state"], "paused");
    let answer = call(&router, "POST", "/v1/jobs/life/pause", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(answer.error().error.contains("paused already"));
    let answer = call(&router, "POST", "/v1/jobs/life/resume", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["state"], "streaming");
    let answer = call(&router, "POST", "/v1/jobs/life/resume", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let answer = call(&router, "GET", "/v1/jobs/life/compression", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"job": "life", "sinks": []}));

    let answer = call(&router, "DELETE", "/v1/jobs/life", None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.body.is_empty());
    for (method, uri) in [
        ("GET", "/v1/jobs/life"),
        ("DELETE", "/v1/jobs/life"),
        ("POST", "/v1/jobs/life/pause"),
        ("POST", "/v1/jobs/life/resume"),
        ("GET", "/v1/jobs/life/compression"),
    ] {
        let answer = call(&router, method, uri, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert_eq!(answer.error().error, "no job `life`");
    }
    assert_eq!(
        *control.deleted.lock().unwrap(),
        [("life".to_owned(), false)]
    );
    let answer = call(&router, "GET", "/v1/jobs", None).await;
    assert_eq!(answer.json(), json!({"jobs": []}));
}

#[tokio::test]
async fn delete_reads_drop_slot() {
    let (control, router) = app(None);
    for name in ["a", "b", "c"] {
        control.insert(spec_named(name), JobState::Streaming);
    }
    for (uri, status, field) in [
        ("/v1/jobs/a?drop_slot=yes", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot=1", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot=TRUE", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot", 400, Some("drop_slot")),
        (
            "/v1/jobs/a?drop_slot=true&drop_slot=false",
            400,
            Some("drop_slot"),
        ),
        ("/v1/jobs/a?dropslot=true", 400, Some("dropslot")),
        ("/v1/jobs/a?drop_slot=true", 204, None),
        ("/v1/jobs/b?drop_slot=false", 204, None),
        ("/v1/jobs/c", 204, None),
        ("/v1/jobs/c?drop_slot=true", 404, None),
    ] {
        let answer = call(&router, "DELETE", uri, None).await;
        assert_eq!(answer.status.as_u16(), status, "{uri}: {}", answer.text());
        if status >= 400 {
            let error = answer.error();
            assert_eq!(error.field.as_deref(), field, "{uri}");
            if let Some(field) = field {
                assert!(error.error.contains(field), "{uri}: {error:?}");
            }
        }
    }
    assert_eq!(
        *control.deleted.lock().unwrap(),
        [
            ("a".to_owned(), true),
            ("b".to_owned(), false),
            ("c".to_owned(), false)
        ]
    );
    let uri: axum::http::Uri = "/v1/jobs/x?drop_slot=%74rue".parse().unwrap();
    assert!(drop_slot_param(&uri).unwrap());
}

#[tokio::test]
async fn tenant_lists_the_jobs_carrying_it() {
    let (control, router) = app(None);
    control.insert(spec_named("three-seven"), JobState::Streaming);
    let mut all = spec_named("everyone");
    all.tenants.include = TenantFilter::All;
    control.insert(all, JobState::Paused);

    let answer = call(&router, "GET", "/v1/tenants/3", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body: TenantJobs = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(body.tenant, "3");
    let jobs: Vec<&str> = body.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(jobs, ["everyone", "three-seven"]);

    control.jobs.lock().unwrap().remove("everyone");
    let answer = call(&router, "GET", "/v1/tenants/acme%20corp", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"tenant": "acme corp", "jobs": []}));
}

#[tokio::test]
async fn control_errors_map_to_statuses() {
    let cases = [
        (ControlError::NotFound("x".into()), 404),
        (ControlError::AlreadyExists("x".into()), 409),
        (ControlError::Conflict("x".into()), 409),
        (ControlError::Unavailable("x".into()), 503),
        (
            ControlError::InvalidSpec(JobSpecError::Parse {
                path: "sinks[0].kind".into(),
                message: "m".into(),
            }),
            400,
        ),
        (
            ControlError::InvalidSpec(JobSpecError::Invalid {
                field: "source.slot".into(),
                reason: "r".into(),
            }),
            422,
        ),
    ];
    for (error, status) in cases {
        let error = ApiError::from(error);
        assert_eq!(error.status().as_u16(), status, "{error}");
    }
    let error = ApiError::from(ControlError::InvalidSpec(JobSpecError::Invalid {
        field: "source.slot".into(),
        reason: "bad".into(),
    }));
    assert_eq!(
        error.body(),
        ErrorBody {
            error: "job spec: source.slot: bad".into(),
            field: Some("source.slot".into())
        }
    );
    let error = ApiError::from(JobSpecError::Parse {
        path: crate::control::job_spec::DOCUMENT_PATH.into(),
        message: "expected `=` (line 1, column 3)".into(),
    });
    assert_eq!(error.field(), None);
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);

    // Through the router: the manager's refusal of a submit.
    let (_, router) = app(None);
    let answer = submit(&router, Some(TOML), valid_named(UNAVAILABLE_JOB), None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.error().error.contains("metadata store unreachable"));
}

#[tokio::test]
async fn put_replaces_a_job_s_spec_keeping_its_name_slot_and_publication() {
    let (control, router) = app(None);
    submit(&router, Some(TOML), valid_named("grow"), None).await;
    let put = |body: String, uri: &'static str, content_type: &'static str| {
        let router = router.clone();
        async move {
            let builder = request("PUT", uri, None).header(header::CONTENT_TYPE, content_type);
            send(&router, builder.body(Body::from(body)).unwrap()).await
        }
    };
    let wider = valid_named("grow").replace("include = [3, 7]", "include = [3, 7, 9]");
    let answer = put(wider.clone(), "/v1/jobs/grow", TOML).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["id"], "grow");
    assert!(control.jobs.lock().unwrap()["grow"]
        .spec
        .includes_tenant("9"));

    let answer = put(valid_named("other"), "/v1/jobs/grow", TOML).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error().field.as_deref(), Some("name"));
    let moved = wider.replace("slot = \"slot_t\"", "slot = \"slot_u\"");
    let answer = put(moved, "/v1/jobs/grow", TOML).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error().field.as_deref(), Some("source.slot"));
    assert!(control.jobs.lock().unwrap()["grow"]
        .spec
        .includes_tenant("9"));

    let answer = put(valid_named("nobody"), "/v1/jobs/nobody", TOML).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = put(wider.clone(), "/v1/jobs/grow", "text/plain").await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = put("name = ".into(), "/v1/jobs/grow", TOML).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// `POST /v1/jobs/{job}/resync` with `body`.
#[tokio::test]
async fn sync_answers_with_the_positions_and_names_what_is_wrong() {
    let (_control, router) = app(None);
    submit(&router, Some(TOML), valid_named("sy"), None).await;
    for body in ["", r#"{"timeout_secs": 5}"#] {
        let answer = call_json(&router, "POST", "/v1/jobs/sy/sync", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{body}");
        let json = answer.json();
        assert_eq!(json["source_lsn"], "0/16B3748");
        assert_eq!(json["sequences_raised"], 2);
    }
    let answer = call_json(
        &router,
        "POST",
        "/v1/jobs/sy/sync",
        r#"{"timeout_secs": 0}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error().field.as_deref(), Some("timeout_secs"));
    let answer = call_json(&router, "POST", "/v1/jobs/sy/sync", r#"{"timeout": 5}"#).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.error().error.contains("timeout"),
        "{:?}",
        answer.error()
    );
    let answer = call_json(&router, "POST", "/v1/jobs/nope/sync", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call_json(&router, "POST", "/v1/jobs/sy/pause", "")
            .await
            .status,
        StatusCode::OK
    );
    let answer = call_json(&router, "POST", "/v1/jobs/sy/sync", "").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
}

async fn resync(router: &Router, job: &str, body: &str) -> Answer {
    call_json(router, "POST", &format!("/v1/jobs/{job}/resync"), body).await
}

#[tokio::test]
async fn resync_takes_the_job_tables_and_names_what_is_wrong() {
    let (_control, router) = app(None);
    submit(&router, Some(TOML), valid_named("rs"), None).await;
    let answer = resync(&router, "rs", r#"{"tables": ["orders"]}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["id"], "rs");

    let answer = resync(&router, "rs", r#"{"tables": ["public.nope"]}"#).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = answer.error();
    assert_eq!(error.field.as_deref(), Some("tables"));
    assert!(
        error
            .error
            .contains("`public.nope` is not a table of job `rs`"),
        "{error:?}"
    );
    let answer = resync(&router, "rs", r#"{"tables": []}"#).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.error().error.contains("at least one table"));

    // Tenants' rows only: tenants the job carries.
    for body in [
        r#"{"tables": ["orders"], "tenants": ["7"]}"#,
        r#"{"tables": ["orders"], "tenants": [7, 3]}"#,
    ] {
        let answer = resync(&router, "rs", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{body}");
    }
    for (body, wanted) in [
        (
            r#"{"tables": ["orders"], "tenants": ["8"]}"#,
            "tenant `8` is not one of job `rs`'s tenants (3, 7)",
        ),
        (
            r#"{"tables": ["orders"], "tenants": [" "]}"#,
            "a tenant id is empty",
        ),
    ] {
        let answer = resync(&router, "rs", body).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let error = answer.error();
        assert_eq!(error.field.as_deref(), Some("tenants"), "{body}");
        assert!(error.error.contains(wanted), "{body}: {error:?}");
    }

    for body in [
        r#"{"table": "orders"}"#,
        r#"{"tables": "orders"}"#,
        r#"{"tables": ["orders"], "tenants": [true]}"#,
        r#"{"tables": ["orders"], "tenants": "7"}"#,
        "not json",
    ] {
        let answer = resync(&router, "rs", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer.error().error.contains("invalid request body"),
            "{body}"
        );
    }
    let answer = resync(&router, "other", r#"{"tables": ["orders"]}"#).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[test]
fn a_jobs_detail_names_its_tables_in_error_renamed_and_left_out_and_its_slot() {
    let job = FakeJob {
        spec: spec_named("detail"),
        state: JobState::Streaming,
    };
    let detail = crate::api::client::job_detail(&FakeControl::status(&job));
    assert!(
        detail.contains("table in error: public.orders (sink 0): violates check constraint")
            && detail.contains(
                "table renamed on the source: public.orders is public.orders_v2 there now"
            )
            && detail.contains("name it public.orders_v2 in the spec")
            && detail.contains(
                "table not carried: public.countries matches public.* but has no tenant column `tenant_id`"
            )
            && detail.contains("sequence \"public\".\"orders_id_seq\" is not kept in step on target 0")
            && detail.contains(
                "replication slot: unreserved, keeps 5242880 bytes of WAL (the source may write 0 \
                 more before it invalidates the slot)"
            ),
        "{detail}"
    );
}

#[tokio::test]
async fn events_come_newest_first_redacted_and_limited() {
    let (control, router) = app(None);
    control.insert(spec_named("known"), JobState::Streaming);
    let answer = call(&router, "GET", "/v1/jobs/known/events", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["job"], "known");
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["failed", "streaming", "submitted"]);
    let detail = body["events"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("password=***") && !detail.contains("hunter2"),
        "{detail}"
    );
    assert_eq!(body["events"][1]["detail"], Value::Null);

    let answer = call(&router, "GET", "/v1/jobs/known/events?limit=1", None).await;
    assert_eq!(answer.json()["events"].as_array().unwrap().len(), 1);
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=-1",
        "limit=1&limit=2",
    ] {
        let answer = call(
            &router,
            "GET",
            &format!("/v1/jobs/known/events?{query}"),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.error().field.as_deref(), Some("limit"), "{query}");
    }
    let answer = call(&router, "GET", "/v1/jobs/known/events?since=1", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer
        .error()
        .error
        .contains("unknown query parameter `since`"));
    let answer = call(&router, "GET", "/v1/jobs/nope/events", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}
