//! The `projections` binary: configuration from flags and environment, then [`projections::Application`].

use clap::Parser;
use projections::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    platform::telemetry::init("projections", &config.telemetry);
    let app = Application::build(config).await?;
    app.run(platform::shutdown::on_signal()).await?;
    platform::telemetry::shutdown();
    Ok(())
}
