//! The `process-manager` binary: configuration from flags and environment, then
//! [`process_manager::Application`].

use clap::Parser;
use process_manager::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    platform::telemetry::init("process-manager", &config.telemetry);
    let app = Application::build(config).await?;
    app.run(platform::shutdown::on_signal()).await?;
    platform::telemetry::shutdown();
    Ok(())
}
