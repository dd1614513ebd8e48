//! The `query-service` binary: configuration from flags and environment, then
//! [`query_service::Application`].

use clap::Parser;
use query_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    platform::telemetry::init("query-service", &config.telemetry);
    let app = Application::build(config).await?;
    app.run(platform::shutdown::on_signal()).await?;
    platform::telemetry::shutdown();
    Ok(())
}
