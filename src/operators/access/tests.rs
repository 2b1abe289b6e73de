//! Unit and property tests of the access predictor.

use std::collections::HashMap;

use proptest::prelude::*;

use super::evaluate::spearman;
use super::*;

const T0: i64 = 1_700_000_000;

fn key(tenant: &str, bucket: i64) -> BucketKey {
    BucketKey {
        tenant: tenant.into(),
        table: "orders".into(),
        bucket,
    }
}

fn config(mode: PredictorMode) -> PredictorConfig {
    PredictorConfig {
        mode,
        ..PredictorConfig::default()
    }
}

fn steady_counts() -> HashMap<BucketKey, f64> {
    HashMap::from([
        (key("a", 1), 100.0),
        (key("a", 2), 10.0),
        (key("b", 7), 40.0),
    ])
}

fn run(p: &mut Predictor, windows: usize, counts: &HashMap<BucketKey, f64>) {
    for w in 0..windows {
        p.close_window(T0 + 10 * w as i64, counts, &HashMap::new());
    }
}

fn assert_all_finite(p: &Predictor) {
    for (k, v) in p.predictions() {
        assert!(v.is_finite() && v >= 0.0, "{k:?} -> {v}");
        assert_eq!(p.hotness(k), Some(v));
    }
}

#[test]
fn cold_start_is_round_robin() {
    let mut p = Predictor::new(PredictorConfig::default());
    assert_eq!(p.in_use(), PredictorKind::RoundRobin);
    assert_eq!(p.predictions().count(), 0);
    assert_eq!(p.hotness(&key("a", 1)), None);
    assert!(p.top(5).is_empty() && p.tenant_hotness().is_empty());
    p.close_window(T0, &HashMap::new(), &HashMap::new());
    assert_eq!(p.in_use(), PredictorKind::RoundRobin, "no bucket ever seen");
    assert_eq!(p.errors(), PredictionErrors::default());
}

#[test]
fn steady_workload_is_predicted_by_heuristic_and_auto() {
    for mode in [PredictorMode::Heuristic, PredictorMode::Auto] {
        let mut p = Predictor::new(config(mode));
        run(&mut p, 30, &steady_counts());
        assert_eq!(
            p.in_use(),
            PredictorKind::Heuristic,
            "{mode:?}: model does not beat an exact EWMA"
        );
        let hot = p.hotness(&key("a", 1)).unwrap();
        assert!((hot - 100.0).abs() < 1.0, "{mode:?}: {hot}");
        assert_eq!(p.top(1)[0].0, key("a", 1));
        assert!((p.tenant_hotness()["a"] - 110.0).abs() < 1.0);
        assert_eq!(p.hotness(&key("zzz", 1)), None);
        assert!(p.errors().heuristic.unwrap() < 1e-3);
    }
}

#[test]
fn model_mode_learns_steady_counts() {
    let mut p = Predictor::new(config(PredictorMode::Model));
    run(&mut p, 40, &steady_counts());
    assert_eq!(p.in_use(), PredictorKind::Model);
    let hot = p.hotness(&key("a", 1)).unwrap();
    assert!((hot - 100.0).abs() < 25.0, "{hot}");
}

#[test]
fn nan_weights_fall_back_to_heuristic_and_recover() {
    for mode in [PredictorMode::Model, PredictorMode::Auto] {
        let mut p = Predictor::new(config(mode));
        run(&mut p, 5, &steady_counts());
        let mut saved = p.save();
        saved
            .weights
            .iter_mut()
            .step_by(3)
            .for_each(|w| *w = f32::NAN);
        saved.weights[0] = f32::INFINITY;
        p.restore_model(saved).unwrap();
        assert_eq!(p.in_use(), PredictorKind::Heuristic);
        assert_all_finite(&p);
        assert!(p.prediction_rows().iter().all(|r| r.model.is_none()));
        run(&mut p, 5, &steady_counts());
        assert_all_finite(&p);
        assert!(
            p.save().weights.iter().all(|w| w.is_finite()),
            "model recovered"
        );
        if mode == PredictorMode::Model {
            assert_eq!(p.in_use(), PredictorKind::Model);
        }
    }
}

#[test]
fn nan_weights_restored_before_any_window_are_survived() {
    let mut p = Predictor::new(config(PredictorMode::Model));
    let mut saved = p.save();
    saved.weights.iter_mut().for_each(|w| *w = f32::NAN);
    p.restore_model(saved).unwrap();
    let report = p.close_window(T0, &steady_counts(), &HashMap::new());
    assert!(report.model_reset);
    assert_eq!(p.in_use(), PredictorKind::Heuristic);
    assert_all_finite(&p);
}

#[test]
fn mode_off_is_round_robin() {
    let mut p = Predictor::new(config(PredictorMode::Off));
    run(&mut p, 5, &steady_counts());
    assert_eq!(p.in_use(), PredictorKind::RoundRobin);
    assert_eq!(p.predictions().count(), 0);
    assert_eq!(p.hotness(&key("a", 1)), None);
}

#[test]
fn save_restore_round_trip_gives_identical_predictions() {
    let mut a = Predictor::new(PredictorConfig {
        seed: 1,
        ..config(PredictorMode::Model)
    });
    let mut b = Predictor::new(PredictorConfig {
        seed: 2,
        ..config(PredictorMode::Model)
    });
    let windows = [
        steady_counts(),
        HashMap::from([(key("c", 3), 5.0)]),
        steady_counts(),
    ];
    for (i, counts) in windows.iter().cycle().take(9).enumerate() {
        a.close_window(T0 + 10 * i as i64, counts, &HashMap::new());
        b.close_window(T0 + 10 * i as i64, counts, &HashMap::new());
    }
    let mut same_seed = Predictor::new(a.config().clone());
    for (i, counts) in windows.iter().cycle().take(9).enumerate() {
        same_seed.close_window(T0 + 10 * i as i64, counts, &HashMap::new());
    }
    assert_eq!(
        a.prediction_rows(),
        same_seed.prediction_rows(),
        "deterministic given a seed"
    );
    assert_ne!(a.prediction_rows(), b.prediction_rows());
    let json = serde_json::to_string(&a.save()).unwrap();
    let saved: SavedModel = serde_json::from_str(&json).unwrap();
    assert_eq!(saved, a.save());
    b.restore_model(saved).unwrap();
    assert_eq!(a.prediction_rows(), b.prediction_rows());
    let hot: Vec<_> = a.predictions().map(|(k, v)| (k.clone(), v)).collect();
    assert_eq!(
        hot,
        b.predictions()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Vec<_>>()
    );
}

#[test]
fn restore_rejects_wrong_shapes() {
    let mut p = Predictor::new(PredictorConfig::default());
    let mut saved = p.save();
    saved.layer_shapes[0] = vec![3, 3];
    assert!(matches!(
        p.restore_model(saved),
        Err(ModelError::ShapeMismatch { .. })
    ));
    let mut saved = p.save();
    saved.weights.pop();
    assert!(matches!(
        p.restore_model(saved),
        Err(ModelError::WeightCount { .. })
    ));
    let mut saved = p.save();
    saved.version = 99;
    assert!(matches!(
        p.restore_model(saved),
        Err(ModelError::Version { .. })
    ));
}

#[test]
fn eviction_keeps_tracked_buckets_bounded() {
    let mut p = Predictor::new(PredictorConfig {
        max_buckets: 50,
        idle_evict_windows: 3,
        ..PredictorConfig::default()
    });
    for w in 0..10_i64 {
        let counts: HashMap<_, _> = (0..200)
            .map(|b| (key("t", w * 1000 + b), 1.0 + b as f64))
            .collect();
        let report = p.close_window(T0 + 10 * w, &counts, &HashMap::new());
        assert!(report.tracked_buckets <= 50 && p.tracked_buckets() <= 50);
    }
    // The hottest of the last window survive the cap.
    assert!(p.hotness(&key("t", 9199)).is_some());
    assert!(p.hotness(&key("t", 9000)).is_none());
    run(&mut p, 5, &HashMap::new());
    assert_eq!(p.tracked_buckets(), 0, "idle buckets are evicted");
}

#[test]
fn trace_is_deterministic_ordered_and_skewed() {
    let cfg = TraceConfig {
        events_per_sec: 500.0,
        keys_per_table: 10_000,
        diurnal_amplitude: 0.0,
        ..TraceConfig::default()
    };
    let (a, b) = (ZipfDriftTrace::new(cfg.clone()), ZipfDriftTrace::new(cfg));
    let ea: Vec<_> = a.events(0..20).collect();
    assert_eq!(ea, b.events(0..20).collect::<Vec<_>>());
    assert_eq!(
        ea,
        (0..20)
            .flat_map(|s| a.events_in_second(s))
            .collect::<Vec<_>>()
    );
    assert!(ea.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    assert!((9_000..11_000).contains(&ea.len()), "{}", ea.len());
    let mut per_tenant: HashMap<&str, usize> = HashMap::new();
    ea.iter()
        .for_each(|e| *per_tenant.entry(&e.tenant).or_default() += 1);
    let busiest = per_tenant.values().max().copied().unwrap_or(0);
    assert!(busiest > 5 * ea.len() / 40, "tenant activity is skewed");
    assert!(a.is_premium("tenant-000") && !a.is_premium("tenant-039"));
}

#[test]
fn spearman_basics() {
    assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap() - 1.0).abs() < 1e-12);
    assert!((spearman(&[3.0, 2.0, 1.0], &[10.0, 20.0, 30.0]).unwrap() + 1.0).abs() < 1e-12);
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
}

fn small_trace() -> TraceConfig {
    TraceConfig {
        tenants: 10,
        premium_tenants: 2,
        keys_per_table: 20_000,
        events_per_sec: 400.0,
        drift_every_secs: 120,
        ..TraceConfig::default()
    }
}

/// On this small, sparse trace (hot set moves every 2 min) the model ranks better than
/// both baselines and has a lower MAE than the EWMA, but its MAE is ~2% *worse* than
/// last-window's (1.72 vs 1.69): we assert a tie within 5%, not a win.
#[test]
fn model_ties_last_window_on_small_drifting_trace() {
    let report = evaluate(&small_trace(), 900, 10, 500);
    println!("{report}");
    let (model, ewma, last) = (report.model, report.heuristic, report.last_window);
    assert!(model.mae.unwrap() <= 1.05 * last.mae.unwrap(), "{report}");
    assert!(model.mae.unwrap() < ewma.mae.unwrap(), "{report}");
    assert!(model.spearman.unwrap() > last.spearman.unwrap(), "{report}");
    assert!(model.spearman.unwrap() > ewma.spearman.unwrap(), "{report}");
    assert!(
        report.model_in_use_windows > report.scored_windows / 2,
        "{report}"
    );
}

/// Many active buckets at once: every one gets a finite prediction. (How long a window
/// close takes is measured by `cargo bench --bench qos`, not here.)
#[test]
fn ten_thousand_active_buckets_are_all_predicted() {
    let mut p = Predictor::new(PredictorConfig::default());
    for w in 0..4_i64 {
        let counts: HashMap<_, _> = (0..10_000_i64)
            .map(|b| (key(&format!("t{}", b % 40), b), ((b * 7 + w) % 50) as f64))
            .collect();
        p.close_window(T0 + 10 * w, &counts, &HashMap::new());
    }
    assert_eq!(p.tracked_buckets(), 10_000);
    assert_eq!(p.predictions().count(), 10_000);
    assert_all_finite(&p);
}

fn count_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        0.0..10.0_f64,
        0.0..1e6_f64,
        Just(1e12),
        1e11..1e12_f64
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn close_window_never_panics_and_stays_finite(
        windows in prop::collection::vec(
            prop::collection::vec((0..4_u8, 0..300_i64, count_strategy()), 0..120),
            1..12,
        ),
        mode in prop_oneof![Just(PredictorMode::Auto), Just(PredictorMode::Model), Just(PredictorMode::Heuristic)],
        max_buckets in 1..200_usize,
    ) {
        let mut p = Predictor::new(PredictorConfig { mode, max_buckets, min_trained_windows: 1, ..PredictorConfig::default() });
        for (i, window) in windows.iter().enumerate() {
            let counts: HashMap<BucketKey, f64> =
                window.iter().map(|(t, b, c)| (key(&format!("t{t}"), *b), *c)).collect();
            let reads = HashMap::from([("orders".to_string(), 1e12)]);
            let report = p.close_window(T0 + 10 * i as i64, &counts, &reads);
            prop_assert!(p.tracked_buckets() <= max_buckets);
            prop_assert!(report.window_errors.heuristic.is_none_or(f64::is_finite));
            for (k, v) in p.predictions() {
                prop_assert!(v.is_finite() && v >= 0.0, "{:?} -> {}", k, v);
            }
            for (_, v) in p.tenant_hotness() {
                prop_assert!(v.is_finite() && v >= 0.0);
            }
        }
    }
}
