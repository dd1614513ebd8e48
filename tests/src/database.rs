//! A database per test, cloned from a migrated template.

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Mutex, OnceCell};

use crate::servers::Servers;

const TEMPLATE_DB: &str = "tally_template";

/// Creates the migrated template database once per process.
async fn ensure_template(servers: &Servers) {
    static TEMPLATE: OnceCell<()> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let mut admin = PgConnection::connect(&servers.pg_url("postgres"))
                .await
                .expect("connect to test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {TEMPLATE_DB}"))
                .execute(&mut admin)
                .await
                .expect("create template database");
            admin.close().await.ok();
            let pool = PgPool::connect(&servers.pg_url(TEMPLATE_DB))
                .await
                .expect("connect to template database");
            platform::db::migrate(&pool)
                .await
                .expect("migrate template database");
            // A template must have no connections when it is cloned.
            pool.close().await;
        })
        .await;
}

/// A fresh database cloned from the migrated template.
pub async fn create_test_database(servers: &Servers) -> String {
    // Cloning needs the template to be free of other sessions, so clones are serialised.
    static CLONE_LOCK: Mutex<()> = Mutex::const_new(());
    ensure_template(servers).await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let _guard = CLONE_LOCK.lock().await;
    let mut admin = PgConnection::connect(&servers.pg_url("postgres"))
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
        .execute(&mut admin)
        .await
        .expect("clone template database");
    admin.close().await.ok();
    name
}
