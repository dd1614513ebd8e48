//! `tally token mint`: an HS256 token for development, signed with the secret the services
//! check (`TALLY_AUTH_HS256_SECRET(_FILE)`, as `./dev up` sets it).

use clap::{Args, Subcommand};
use platform::auth::{AuthConfig, Scope};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a signed token (HS256, development) on stdout.
    Mint(MintArgs),
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// Scopes, repeatable: accounts:write, accounts:read, transfers:write, audit:read, admin.
    #[arg(long = "scope", required = true)]
    scopes: Vec<Scope>,
    /// Confine the token to this owner's accounts.
    #[arg(long)]
    owner: Option<String>,
    /// The token's subject: the actor recorded on the events it causes.
    #[arg(long, default_value = "developer")]
    subject: String,
    /// Lifetime in seconds.
    #[arg(long = "ttl-s", default_value_t = 86_400)]
    ttl_s: u64,
    #[command(flatten)]
    auth: AuthConfig,
}

#[allow(clippy::print_stdout)] // the token is the output
pub fn run(command: TokenCommand) -> anyhow::Result<bool> {
    let TokenCommand::Mint(args) = command;
    let Some(secret) = platform::auth::hs256_secret(&args.auth)? else {
        anyhow::bail!(
            "no HS256 secret: set TALLY_AUTH_HS256_SECRET or TALLY_AUTH_HS256_SECRET_FILE (./dev up writes .dev/secrets/jwt-hs256)"
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = platform::auth::mint_hs256(
        &secret,
        &args.auth.issuer,
        &args.auth.audience,
        &args.subject,
        &args.scopes,
        args.owner.as_deref(),
        now,
        args.ttl_s,
    )?;
    println!("{token}");
    Ok(true)
}
