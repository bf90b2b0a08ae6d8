//! Batching and decoding, and the order of rebalance events, at unit level.

use super::*;

fn rec(p: i32, o: i64, payload: &[u8]) -> SourceRecord {
    SourceRecord {
        topic: "t".into(),
        partition: p,
        offset: o,
        key: None,
        fetch_id: Some(format!("f{p}-{o}")),
        payload: Some(payload.to_vec()),
        fetched_at: Utc::now(),
        headers: Vec::new(),
    }
}

#[test]
fn commit_offsets_are_one_past_the_highest_per_partition() {
    let rs = [
        rec(0, 5, b""),
        rec(0, 7, b""),
        rec(1, 2, b""),
        rec(0, 6, b""),
    ];
    let offs = next_offsets(&rs);
    assert_eq!(offs.get(&("t".to_string(), 0)), Some(&8));
    assert_eq!(offs.get(&("t".to_string(), 1)), Some(&3));
    assert_eq!(offs.len(), 2);
}

#[test]
fn decode_separates_poison_and_keeps_order() {
    let good = include_bytes!("../../../fixtures/randomuser/v1.3-compact-20-users.json");
    let legacy = include_bytes!("../../../fixtures/randomuser/v1.0-legacy-6-users.json");
    let recs = vec![
        rec(0, 0, good),
        rec(0, 1, legacy),
        rec(0, 2, b"nope"),
        rec(0, 3, good),
    ];
    let (ok, poison) = decode(recs, 1 << 20, Utc::now(), true);
    assert_eq!(
        ok.iter().map(|r| r.source.offset).collect::<Vec<_>>(),
        vec![0, 3]
    );
    assert_eq!(ok[0].users.len(), 20);
    assert_eq!(
        poison
            .iter()
            .map(|p| (p.source.offset, p.error.kind()))
            .collect::<Vec<_>>(),
        vec![(1, "legacy_shape"), (2, "not_json")]
    );
    // Poison keeps its bytes for the dead-letter topic; loaded records lose their secrets.
    assert_eq!(poison[0].source.payload.as_deref(), Some(&legacy[..]));
    assert_eq!(poison[1].source.payload.as_deref(), Some(&b"nope"[..]));
    assert!(!ok[0].payload_text.contains("\"password\""));
    assert_eq!(
        ok[0].original(),
        &good[..],
        "the original is kept for the DLQ"
    );
    assert!(ok[0].payload_text.contains("\"uuid\""));
    let (_, too_big) = decode(vec![rec(0, 9, good)], 100, Utc::now(), true);
    assert_eq!(too_big[0].error.kind(), "too_large");
    assert_eq!(too_big[0].source.payload.as_deref(), Some(&good[..]));
    let bad_utf8 = decode(vec![rec(0, 10, b"{\"a\":\"\xff\"}")], 100, Utc::now(), true).1;
    assert_eq!(bad_utf8[0].error.kind(), "invalid_utf8");
    assert_eq!(
        bad_utf8[0].source.payload.as_deref(),
        Some(&b"{\"a\":\"\xff\"}"[..])
    );
    let (kept, _) = decode(vec![rec(0, 11, good)], 1 << 20, Utc::now(), false);
    assert_eq!(
        kept[0].payload_text.as_bytes(),
        &good[..],
        "kept byte for byte"
    );
}

#[test]
fn parallel_decode_matches_sequential_decode_in_order() {
    let good = include_bytes!("../../../fixtures/randomuser/v1.3-compact-20-users.json");
    let recs: Vec<SourceRecord> = (0..23)
        .map(|o| rec(0, o, if o % 5 == 3 { b"nope" } else { good }))
        .collect();
    let now = Utc::now();
    let (g1, b1) = decode(recs.clone(), 1 << 20, now, true);
    let (g, b) = decode_parallel(recs, 1 << 20, now, true);
    let offs = |v: &[LoadRecord]| v.iter().map(|r| r.source.offset).collect::<Vec<_>>();
    assert_eq!(offs(&g), offs(&g1));
    assert_eq!(
        b.iter().map(|p| p.source.offset).collect::<Vec<_>>(),
        b1.iter().map(|p| p.source.offset).collect::<Vec<_>>()
    );
    assert!(
        g.iter()
            .zip(&g1)
            .all(|(a, b)| a.users == b.users && a.payload_text == b.payload_text)
    );
    assert!(decode_parallel(Vec::new(), 1, now, true).0.is_empty());
}

#[tokio::test(start_paused = true)]
async fn age_deadline_starts_with_the_first_record() {
    let (age, linger) = (Duration::from_secs(1), Duration::from_secs(10));
    let mut b = Batch::default();
    assert_eq!(b.deadline(age, linger), None);
    b.push(rec(0, 0, b""));
    let d = b.deadline(age, linger).unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    b.push(rec(0, 1, b""));
    assert_eq!(
        b.deadline(age, linger),
        Some(d),
        "later records do not extend the age"
    );
    assert_eq!(b.bytes(), 0);
    b.push(rec(1, 2, b"12345"));
    assert_eq!(b.bytes(), 5);
    assert_eq!(b.retain_partitions(|_, p| p == 0), 1);
    assert_eq!(b.bytes(), 0);
    assert_eq!(b.take().len(), 2);
    assert!(b.is_empty() && b.deadline(age, linger).is_none());
}

#[test]
fn only_a_real_fetch_id_is_an_identity() {
    assert_eq!(usable_fetch_id(b"0190-a"), Some("0190-a".to_string()));
    assert_eq!(
        usable_fetch_id(b""),
        None,
        "empty: every such record would be one"
    );
    assert_eq!(
        usable_fetch_id(b"\xff\xfe"),
        None,
        "not UTF-8: would collapse when decoded lossily"
    );
    assert_eq!(
        usable_fetch_id(&[b'a'; MAX_FETCH_ID_BYTES]).map(|s| s.len()),
        Some(MAX_FETCH_ID_BYTES)
    );
    assert_eq!(usable_fetch_id(&[b'a'; MAX_FETCH_ID_BYTES + 1]), None);
}

/// A partition revoked and assigned back within one poll (a member leaving and coming
/// back, a lost assignment): what was fetched before the revocation goes, the first record
/// of the new assignment stays, and the commit covers it.
#[test]
fn events_apply_in_the_order_they_happened() {
    let p0 = vec![("t".to_string(), 0)];
    let mut b = Batch::default();
    b.push(rec(0, 5, b"a"));
    b.push(rec(0, 6, b"b"));
    b.push(rec(1, 9, b"c"));
    assert_eq!(b.apply(&Rebalanced::Revoked(p0.clone())), 2);
    assert_eq!(b.apply(&Rebalanced::Assigned(p0.clone())), 0);
    b.push(rec(0, 5, b"a")); // re-read from the committed offset
    assert_eq!(b.len(), 2);
    let offsets = next_offsets(&b.take());
    assert_eq!(offsets.get(&("t".to_string(), 0)), Some(&6));
    assert_eq!(offsets.get(&("t".to_string(), 1)), Some(&10));
}

#[tokio::test(start_paused = true)]
async fn linger_closes_a_batch_once_records_stop_arriving() {
    let (age, linger) = (Duration::from_secs(5), Duration::from_millis(50));
    let mut b = Batch::default();
    b.push(rec(0, 0, b""));
    let first = b.deadline(age, linger).unwrap();
    tokio::time::advance(Duration::from_millis(30)).await;
    b.push(rec(0, 1, b""));
    let second = b.deadline(age, linger).unwrap();
    assert_eq!(
        second - first,
        Duration::from_millis(30),
        "each record restarts the linger"
    );
    assert_eq!(second, Instant::now() + linger);
    // A steady trickle never lingers out, but the age still bounds the batch.
    for i in 2..200 {
        tokio::time::advance(Duration::from_millis(40)).await;
        b.push(rec(0, i, b""));
    }
    let opened = b.opened.unwrap();
    assert_eq!(b.deadline(age, linger), Some(opened + age));
}
