use super::*;
use crate::sink::{SinkError, WriteOutcome};
use std::time::Duration;

fn series(t: &Telemetry, name: &str, labels: &[(&str, &str)]) -> f64 {
    t.metrics()
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        // A counter's gauge part is zero, and a gauge's counter part.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

fn check(t: &Telemetry, c: Check) -> String {
    t.readiness().report()["checks"][c.as_str()]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_check_starts_failing() {
    let t = Telemetry::new().unwrap();
    assert!(!t.readiness().is_ready());
    for c in Check::ALL {
        assert_eq!(check(&t, c), "not checked yet");
    }
}

#[tokio::test]
async fn a_committed_batch_shows_in_the_log_metrics_and_summary_at_once() {
    let t = Telemetry::new().unwrap();
    let mut rx = t.summary();
    let outcome = WriteOutcome {
        new_records: 3,
        duplicate_records: 1,
        users_written: 30,
        bytes_written: 3000,
        ..WriteOutcome::default()
    };
    t.emit(BatchWriting { records: 4 });
    assert_eq!(rx.borrow_and_update().in_flight, 4);
    t.emit(BatchCommitted {
        records: 4,
        outcome: &outcome,
        dead_lettered: 0,
        elapsed: Duration::from_millis(5),
    });
    let s = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|s| s.batches == 1))
        .await
        .expect("the receiver is woken")
        .unwrap()
        .clone();
    assert_eq!((s.loaded, s.duplicates, s.in_flight), (3, 1, 0));
    assert_eq!(series(&t, "etl_loader_records_loaded_total", &[]), 3.0);
    assert_eq!(series(&t, "etl_loader_records_duplicate_total", &[]), 1.0);
    let rows = "etl_loader_rows_written_total";
    // The label values the dashboards and alerts already use.
    let pg = [("sink", "postgres")];
    assert_eq!(series(&t, rows, &[pg[0], ("table", "raw_data")]), 3.0);
    assert_eq!(
        series(&t, rows, &[pg[0], ("table", "processed_data")]),
        30.0
    );
    assert_eq!(series(&t, "etl_loader_sink_bytes_total", &pg), 3000.0);
}

#[test]
fn a_failed_write_fails_the_check_of_its_sink_until_a_write_succeeds() {
    let t = Telemetry::new().unwrap();
    t.emit(DatabaseReady);
    let error = SinkError::Postgres(sqlx::Error::PoolTimedOut);
    t.emit(SinkWriteFailed {
        error: &error,
        retry_in: Duration::from_millis(100),
    });
    assert_ne!(check(&t, Check::Postgres), "ok");
    assert_eq!(check(&t, Check::Parquet), "ok");
    assert_eq!(
        series(&t, "etl_loader_sink_errors_total", &[("sink", "postgres")]),
        1.0
    );
    assert_eq!(t.snapshot().sink_errors, 1);
    t.emit(BatchWritten {
        after_failures: true,
    });
    assert_eq!(check(&t, Check::Postgres), "ok");
}

#[test]
fn a_failed_roll_makes_the_parquet_output_late_whichever_side_failed() {
    let t = Telemetry::new().unwrap();
    t.emit(DatabaseReady);
    let error = SinkError::Postgres(sqlx::Error::PoolTimedOut);
    t.emit(ParquetRollFailed {
        error: &error,
        retry_in: None,
    });
    assert_eq!(check(&t, Check::Postgres), "ok");
    assert_ne!(check(&t, Check::Parquet), "ok");
    // Counted against the sink that failed.
    assert_eq!(
        series(&t, "etl_loader_sink_errors_total", &[("sink", "postgres")]),
        1.0
    );
    t.emit(ParquetCaughtUp);
    assert_eq!(check(&t, Check::Parquet), "ok");
}

#[test]
fn rows_label_values_are_the_published_ones() {
    let labels: Vec<_> = [Sink::Postgres, Sink::Parquet]
        .into_iter()
        .flat_map(|s| [Rows::Raw.label(s), Rows::Processed.label(s)])
        .collect();
    assert_eq!(labels, ["raw_data", "processed_data", "raw", "processed"]);
    assert_eq!(Sink::Parquet.check(), Check::Parquet);
}
