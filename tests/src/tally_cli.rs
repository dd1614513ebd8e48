//! Runs the `tally` binary the way an operator does, pointed at a test's services.

use std::process::Output;

use crate::app::TestApp;
use crate::binaries::workspace_binary;

impl TestApp {
    /// `tally <args>` with this test's NATS, prefix, API and database (the last two through
    /// the environment, as an operator would set them).
    pub async fn tally(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(workspace_binary("tally"))
            .arg(format!("--nats-url={}", self.servers.nats_url))
            .arg(format!("--subject-prefix={}", self.subjects.prefix()))
            .arg("--timeout-ms=10000")
            .args(args)
            .env("TALLY_DATABASE_URL", &self.db_url)
            .env("TALLY_API_URL", &self.http_base)
            .env("TALLY_TOKEN", crate::app::admin_token())
            .env(crate::app::TEST_AUTH_ENV.0, crate::app::TEST_AUTH_ENV.1)
            .kill_on_drop(true)
            .output()
            .await
            .expect("tally binary (cargo build --workspace)")
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
