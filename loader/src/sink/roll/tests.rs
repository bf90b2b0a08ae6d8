//! Roll policy and planning at unit level.

use super::*;

fn waiting(sizes: &[i64], day_of: impl Fn(usize) -> u32) -> Vec<ledger::WaitingRecord> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &bytes)| ledger::WaitingRecord {
            raw_id: uuid::Uuid::from_u128(i as u128 + 1),
            offset: 100 + i as i64,
            fetched_at: chrono::NaiveDate::from_ymd_opt(2026, 12, day_of(i))
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .map(|t| t.and_utc())
                .unwrap(),
            bytes,
            users: 2,
        })
        .collect()
}

#[test]
fn files_close_at_the_size_and_an_unfilled_one_waits() {
    let w = waiting(&[40, 40, 40, 40, 40], |_| 1);
    let full = plan("t", 0, &w, 100, Cut::Full);
    assert_eq!(full.len(), 1, "one full file of 3 records; 2 wait");
    assert_eq!(full[0].records.len(), 3);
    assert_eq!((full[0].first_offset, full[0].last_offset), (100, 102));
    assert_eq!(full[0].users, 6);
    let all = plan("t", 0, &w, 100, Cut::All);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].records.len(), 2);
    let every: usize = all.iter().map(|c| c.records.len()).sum();
    assert_eq!(every, 5, "every record in exactly one file");
    assert!(plan("t", 0, &[], 100, Cut::All).is_empty());
}

#[test]
fn a_roll_across_midnight_is_one_file_per_date() {
    let w = waiting(&[10, 10, 10], |i| if i < 2 { 1 } else { 2 });
    let c = plan("t", 4, &w, 1 << 20, Cut::All);
    assert_eq!(c.len(), 2);
    assert!(
        c[0].raw_path
            .starts_with("raw/date=2026-12-01/t-p4-o100-o101-")
    );
    assert!(
        c[1].processed_path
            .starts_with("processed/date=2026-12-02/t-p4-o102-o102-")
    );
    assert_eq!(
        c[0].raw_path.trim_start_matches("raw/"),
        c[0].processed_path.trim_start_matches("processed/")
    );
}

#[test]
fn due_by_age_or_by_size() {
    let policy = RollPolicy {
        max_bytes: 100,
        interval: Duration::from_secs(600),
    };
    let now = Utc::now();
    let w = |bytes, age: i64| ledger::Waiting {
        topic: "t".into(),
        partition: 0,
        records: 1,
        bytes,
        oldest: now - chrono::Duration::seconds(age),
    };
    assert_eq!(policy.due(&w(10, 5), now), None);
    assert_eq!(policy.due(&w(100, 5), now), Some(Cut::Full));
    assert_eq!(policy.due(&w(10, 600), now), Some(Cut::All));
    let at_once = RollPolicy {
        interval: Duration::ZERO,
        ..policy
    };
    assert_eq!(at_once.due(&w(1, 0), now), Some(Cut::All));
}
