//! Parsing and validation: defaults, bad values naming their variable, one flag per thing.

use super::*;

fn run(extra: &[&str]) -> Result<RunConfig, clap::Error> {
    let mut args = vec!["loader", "run"];
    args.extend_from_slice(extra);
    match Cli::try_parse_from(args)?.command {
        Command::Run(c) => Ok(c.into_config()),
        _ => unreachable!(),
    }
}

/// `--topic` and `--group` mean the same in every command (the old `--kafka-*` names still
/// parse); a backfill takes `--topic` like the rest, and its `--group` is its own.
#[test]
fn one_flag_for_topic_and_group_in_every_command() {
    let c = run(&["--topic", "t1", "--group", "g1"]).unwrap();
    assert_eq!((c.topic.as_str(), c.group_id.as_str()), ("t1", "g1"));
    let c = run(&["--kafka-topic", "t1", "--kafka-group-id", "g1"]).unwrap();
    assert_eq!((c.topic.as_str(), c.group_id.as_str()), ("t1", "g1"));
    for command in ["replay", "status"] {
        let mut args = vec!["loader", command, "--topic", "t2", "--group", "g2"];
        if command == "replay" {
            args.extend(["--to", "2h"]);
        }
        let target = match Cli::try_parse_from(args).unwrap().command {
            Command::Replay(r) => r.target,
            Command::Status(s) => s.target,
            _ => unreachable!(),
        };
        assert_eq!(
            (target.topic.topic.as_str(), target.group.group.as_str()),
            ("t2", "g2")
        );
    }
    let parsed = Cli::try_parse_from([
        "loader", "backfill", "--topic", "t3", "--from", "2h", "--group", "mine",
    ])
    .unwrap();
    let Command::Backfill(b) = parsed.command else {
        unreachable!()
    };
    assert_eq!(b.run.topic, "t3");
    assert_eq!(b.group.as_deref(), Some("mine"));
}

#[test]
fn defaults() {
    let c = run(&[]).unwrap();
    assert_eq!(c.topic, "randomuser.raw");
    assert_eq!(c.group_id, "loader");
    assert_eq!(c.dlq_topic, "randomuser.raw.dlq");
    assert_eq!(c.metrics_addr.port(), 2113);
    assert_eq!(c.batch_max_age, Duration::from_secs(5));
    assert_eq!(c.batch_linger, Duration::from_millis(50));
    assert_eq!(c.batch_max_bytes, 8 << 20);
    assert_eq!(c.batch_writers, 2);
    assert_eq!(c.parquet.roll_max_bytes, 128 << 20);
    assert_eq!(c.parquet.roll_interval, Duration::from_secs(600));
    assert_eq!(c.parquet.url(&c.data_dir).unwrap().scheme(), "file");
    c.validate().unwrap();
}

#[test]
fn bad_values_name_their_variable() {
    for (flag, bad, var) in [
        ("--batch-max-age", "often", "BATCH_MAX_AGE"),
        ("--batch-linger", "soon", "BATCH_LINGER"),
        ("--batch-max-bytes", "0", "BATCH_MAX_BYTES"),
        ("--batch-max-records", "0", "BATCH_MAX_RECORDS"),
        ("--batch-writers", "0", "BATCH_WRITERS"),
        ("--metrics-addr", "nowhere", "METRICS_ADDR"),
        (
            "--loader-max-record-bytes",
            "big",
            "LOADER_MAX_RECORD_BYTES",
        ),
        ("--parquet-roll-max-bytes", "0", "PARQUET_ROLL_MAX_BYTES"),
        (
            "--parquet-roll-max-bytes",
            "2147483648",
            "PARQUET_ROLL_MAX_BYTES",
        ),
        ("--parquet-roll-interval", "soon", "PARQUET_ROLL_INTERVAL"),
    ] {
        let err = run(&[flag, bad]).unwrap_err().to_string();
        assert!(err.contains(var), "{flag}={bad}: {err}");
    }
    for url in [
        "ftp://host/x",
        "s3:///no-bucket",
        "s3://b/p?secret=1",
        "not a url",
    ] {
        let c = run(&["--parquet-url", url]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("PARQUET_URL"), "{url}: {err}");
        assert!(!err.contains("secret=1"), "{url}: {err}");
    }
    let c = run(&["--dlq-topic", "randomuser.raw"]).unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("KAFKA_DLQ_TOPIC")
    );
    // The rolls keep a connection of the pool beside the batch's writers; a pool of one shares it.
    for (writers, pool, used) in [("2", "5", 2), ("5", "5", 4), ("2", "2", 1), ("3", "1", 1)] {
        let c = run(&[
            "--batch-writers",
            writers,
            "--database-max-connections",
            pool,
        ])
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.writers(), used, "BATCH_WRITERS={writers}, pool {pool}");
    }
    // A stall timeout under a second would fail /health between two beats of an idle loop.
    let c = run(&["--health-stall-timeout", "500ms"]).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("HEALTH_STALL_TIMEOUT"), "{err}");
    run(&["--health-stall-timeout", "1s"])
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn help_lists_every_env_var_and_hides_the_database_url() {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let help = cmd
        .find_subcommand_mut("run")
        .unwrap()
        .render_long_help()
        .to_string();
    for var in [
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "KAFKA_BROKERS",
        "KAFKA_TOPIC",
        "KAFKA_GROUP_ID",
        "KAFKA_DLQ_TOPIC",
        "BATCH_MAX_RECORDS",
        "BATCH_MAX_AGE",
        "BATCH_LINGER",
        "BATCH_WRITERS",
        "BATCH_MAX_BYTES",
        "DATA_DIR",
        "PARQUET_URL",
        "PARQUET_ROLL_MAX_BYTES",
        "PARQUET_ROLL_INTERVAL",
        "AWS_SECRET_ACCESS_KEY_FILE",
        "METRICS_ADDR",
        "LOG_DIR",
        "LOADER_SKIP_MIGRATIONS",
    ] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing from --help"
        );
    }
    assert!(
        !help.contains("etl:etl@"),
        "the default URL's password must not be printed"
    );
}
