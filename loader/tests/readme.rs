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
    for sub in ["run", "migrate", "replay", "status", "backfill"] {
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
