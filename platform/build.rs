//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know that: without
//! this, adding a migration file would not rebuild the services.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
