//! `tally`: the command-line client; everything but starting the runtime is in the library
//! (`src/lib.rs`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    cli::run(cli::Cli::parse()).await
}
