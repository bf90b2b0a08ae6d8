//! `bench`: see the library docs, or `bench --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = etl_bench::Config::parse();
    match etl_bench::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
