//! `extractor`: thin entry point; everything lives in the library so tests run the real thing.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = extractor::Config::parse();
    let _guard = match etl_common::telemetry::init("extractor", &config.log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("extractor: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = etl_common::shutdown::on_signal();
    let result = async {
        let app = extractor::Application::build(config).await?;
        app.run(shutdown).await
    }
    .await;
    match result {
        Ok(summary) => {
            tracing::info!(?summary, "extractor stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "extractor failed");
            std::process::ExitCode::FAILURE
        }
    }
}
