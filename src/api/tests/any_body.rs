//! Any body gets a JSON answer, never a server error.

use super::*;

// ---------------------------------------------------------------------------
// Any body: never a server error, always a JSON answer

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bodies_get_4xx_json_or_201(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\PC{0,200}".prop_map(String::into_bytes),
            // Valid documents with one line dropped.
            (0usize..14).prop_map(|skip| VALID
                .lines()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| format!("{l}\n"))
                .collect::<String>()
                .into_bytes()),
        ],
        json in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (_, router) = app(None);
        let content_type = if json { JSON } else { TOML };
        let answer = runtime.block_on(submit(&router, Some(content_type), body, None));
        prop_assert!(
            answer.status == StatusCode::CREATED || answer.status.is_client_error(),
            "{} {}", answer.status, answer.text()
        );
        if answer.status != StatusCode::CREATED {
            let error = answer.error();
            prop_assert!(!error.error.is_empty());
        }
    }
}

#[test]
fn route_table_is_well_formed() {
    for (method, path) in ROUTES {
        assert!(method.parse::<Method>().is_ok(), "{method}");
        assert!(path.starts_with('/'), "{path}");
    }
}
