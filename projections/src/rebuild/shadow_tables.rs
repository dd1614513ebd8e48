//! The shadow tables a rebuild fills: created like the live ones, with the indexes that only
//! serve reads left out until the bulk copy is done.
//!
//! Every event of the copy updates its account's row and most add an entry, so each secondary
//! index took an insert per row version; built once from the finished table, an index is one
//! sort. Unique indexes stay from the start: the projection's upserts resolve conflicts on them.
//! The deferred ones are created under the live tables' own names, so after the swap the live
//! schema looks exactly as its migrations made it.

use sqlx::PgConnection;

use crate::Projection;

/// What `create` left for `build_deferred_indexes`: one `CREATE INDEX` per read-only index.
#[derive(Debug, Default)]
pub struct DeferredIndexes(Vec<String>);

/// Sort memory for building the deferred indexes (the server default, 64 MB, spills an entries
/// index of a few million rows to disk).
const INDEX_BUILD_MEMORY: &str = "256MB";

/// Creates `shadow` with a copy of `kind`'s tables and of `projection_versions`, and puts it
/// first on `conn`'s search path, so the projection's own statements write the shadow tables.
pub async fn create(
    conn: &mut PgConnection,
    kind: Projection,
    live: &str,
    shadow: &str,
) -> Result<DeferredIndexes, sqlx::Error> {
    // A rebuild that died half way leaves its schemas behind; they hold nothing live.
    let mut ddl = format!(
        "DROP SCHEMA IF EXISTS {shadow} CASCADE; CREATE SCHEMA {shadow};
         DROP SCHEMA IF EXISTS tally_retired_{name} CASCADE; CREATE SCHEMA tally_retired_{name};
         CREATE TABLE {shadow}.projection_versions (LIKE {live}.projection_versions INCLUDING ALL);",
        name = kind.name()
    );
    for table in kind.tables() {
        ddl.push_str(&format!(
            "CREATE TABLE {shadow}.{table} (LIKE {live}.{table} INCLUDING ALL EXCLUDING INDEXES);"
        ));
    }
    sqlx::raw_sql(&ddl).execute(&mut *conn).await?;

    let tables: Vec<String> = kind
        .tables()
        .iter()
        .map(|t| format!("{live}.{t}"))
        .collect();
    // Every index of the live tables: (table, index, unique, the constraint that owns it if
    // one does, its definition after USING).
    let indexes: Vec<(String, String, bool, Option<String>, String)> = sqlx::query_as(
        "SELECT quote_ident(t.relname), quote_ident(c.relname), i.indisunique, pg_get_constraintdef(k.oid),
                substr(d.def, strpos(d.def, ' USING ') + 7)
         FROM pg_index i
         CROSS JOIN LATERAL (SELECT pg_get_indexdef(i.indexrelid) AS def) d
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         LEFT JOIN pg_constraint k
           ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x')
         WHERE i.indrelid = ANY($1::text[]::regclass[])
         ORDER BY t.relname, c.relname",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    let mut now = String::new();
    let mut deferred = Vec::new();
    for (table, index, unique, constraint, method_and_columns) in indexes {
        match constraint {
            Some(constraint) => now.push_str(&format!(
                "ALTER TABLE {shadow}.{table} ADD CONSTRAINT {index} {constraint};"
            )),
            None if unique => now.push_str(&format!(
                "CREATE UNIQUE INDEX {index} ON {shadow}.{table} USING {method_and_columns};"
            )),
            None => deferred.push(format!(
                "CREATE INDEX {index} ON {shadow}.{table} USING {method_and_columns};"
            )),
        }
    }
    sqlx::raw_sql(&now).execute(&mut *conn).await?;
    // From here on this connection's unqualified names are the shadow tables.
    sqlx::raw_sql(&format!("SET search_path = {shadow}, {live}"))
        .execute(&mut *conn)
        .await?;
    Ok(DeferredIndexes(deferred))
}

/// Builds the indexes `create` left out, on the filled shadow tables.
pub async fn build_deferred_indexes(
    conn: &mut PgConnection,
    deferred: &DeferredIndexes,
) -> Result<(), sqlx::Error> {
    if deferred.0.is_empty() {
        return Ok(());
    }
    let mut ddl = format!("SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}';");
    for create in &deferred.0 {
        ddl.push_str(create);
    }
    ddl.push_str("RESET maintenance_work_mem;");
    sqlx::raw_sql(&ddl).execute(conn).await?;
    Ok(())
}
