//! The README documents every environment variable the binaries read: each `[env: NAME` that
//! `--help` lists for every loader command and for the extractor must appear in README.md.

use clap::CommandFactory;

fn env_vars(cmd: &mut clap::Command) -> Vec<String> {
    let help = cmd.render_long_help().to_string();
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_string))
        .collect()
}

#[test]
fn every_env_var_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut vars = env_vars(&mut extractor::Config::command());
    let mut loader = loader::Cli::command();
    for sub in ["run", "migrate", "replay", "status", "backfill", "vacuum"] {
        vars.extend(env_vars(loader.find_subcommand_mut(sub).unwrap()));
    }
    vars.sort();
    vars.dedup();
    assert!(vars.len() > 30, "parsed the help: {vars:?}");
    let missing: Vec<&String> = vars
        .iter()
        .filter(|v| !readme.contains(&format!("`{v}`")))
        .collect();
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}

/// docker-compose.yml hands the services every variable they take, under the same name and
/// with the binaries' own default (`NAME: ${NAME:-default}`), or passes it through when it has
/// none (`NAME:`), so a user's `.env` reaches them and compose never silently diverges from
/// `--help`. The exceptions are the container's fixed addresses and paths, and secrets, which
/// compose hands over as files only.
#[test]
fn compose_passes_every_variable_with_the_binaries_default() {
    const FIXED_IN_COMPOSE: [&str; 9] = [
        "KAFKA_BROKERS",     // ${COMPOSE_KAFKA_BROKERS:-redpanda:9092}: the container network
        "DATA_DIR",          // the ./data bind mount
        "LOG_DIR",           // empty: stdout only, replicas told apart by compose
        "METRICS_ADDR",      // the port Prometheus scrapes
        "DATABASE_URL",      // a secret: DATABASE_URL_FILE only
        "DATABASE_URL_FILE", // the compose secret's path
        "KAFKA_SASL_PASSWORD", // a secret: KAFKA_SASL_PASSWORD_FILE only
        "KAFKA_SSL_KEY_PASSWORD", // a secret: KAFKA_SSL_KEY_PASSWORD_FILE only
        "LOADER_SKIP_MIGRATIONS", // "true": the migrate service owns the schema
    ];
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let mut args: Vec<(String, Option<String>)> = Vec::new();
    let mut collect = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            // A switch (`--reprocess`) is off unless given: its default is "false".
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned())
                .or_else(|| (!arg.get_action().takes_values()).then(|| "false".to_string()));
            args.push((env.to_string_lossy().into_owned(), default));
        }
    };
    collect(&extractor::Config::command());
    collect(loader::Cli::command().find_subcommand_mut("run").unwrap());
    assert!(args.len() > 30, "read the arguments: {args:?}");
    let mut wrong = Vec::new();
    for (var, default) in &args {
        if FIXED_IN_COMPOSE.contains(&var.as_str()) {
            continue;
        }
        let ok = match default {
            Some(d) => compose.contains(&format!("{var}: ${{{var}:-{d}}}")),
            None => compose.lines().any(|l| l.trim() == format!("{var}:")),
        };
        if !ok {
            wrong.push(match default {
                Some(d) => format!("{var}: ${{{var}:-{d}}}"),
                None => format!("{var}:"),
            });
        }
    }
    assert!(
        wrong.is_empty(),
        "docker-compose.yml should carry these lines: {wrong:#?}"
    );
}

/// Every topic the project creates carries the pipeline's one record limit, the figure the
/// producers use (`contract::MAX_MESSAGE_BYTES`): compose's `topics` service and the README's
/// commands for a cluster of one's own.
#[test]
fn topics_are_created_with_the_pipelines_record_limit() {
    let limit = format!(
        "max.message.bytes={}",
        etl_common::contract::MAX_MESSAGE_BYTES
    );
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let creates = |text: &str, how: &str| {
        text.lines()
            .filter(|l| l.contains(how))
            .map(|l| (l.matches(how).count(), l.matches(&limit).count()))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (made, limited) = creates(&compose, "rpk topic create");
    assert_eq!((made, limited), (2, 2), "compose: {limit} on every topic");
    let (made, limited) = creates(&readme, "--create");
    assert_eq!((made, limited), (2, 2), "README kafka-topics.sh: {limit}");
    let (made, limited) = creates(&readme, "rpk topic create");
    assert_eq!((made, limited), (2, 2), "README rpk: {limit}");
}
