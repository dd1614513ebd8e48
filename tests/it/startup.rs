//! Services come up on real servers: migrations applied, streams created, health answered.

use std::time::Duration;

use tests::TestApp;

#[tokio::test]
async fn query_service_answers_healthz_and_readyz() {
    let app = TestApp::spawn().await;
    let health = app.http_get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.http_get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true);
    let names: Vec<_> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["postgres", "nats", "projection_lag"]);
}

#[tokio::test]
async fn every_service_reports_ready_on_its_ops_port() {
    let app = TestApp::spawn().await;
    for addr in [
        app.command_ops_addr,
        app.projections_ops_addr,
        app.process_manager_ops_addr,
    ] {
        let response = app
            .http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{addr}");
    }
}

#[tokio::test]
async fn migrations_create_the_event_store() {
    let app = TestApp::spawn().await;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "event_type",
            "event_version",
            "payload",
            "metadata",
            "global_position",
            "tx_id",
            "recorded_at",
            "hash",
        ]
    );
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'snapshots'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(snapshots, 1);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        applied,
        i64::try_from(platform::db::migrator().iter().count()).unwrap()
    );
}

#[tokio::test]
async fn streams_are_created_with_the_designed_settings() {
    let app = TestApp::spawn().await;
    for (name, subject) in [
        (&app.streams.commands, app.subjects.jobs()),
        (&app.streams.events, app.subjects.events()),
        (&app.streams.dead_letters, app.subjects.dead_letters()),
        (&app.streams.audit, app.subjects.audit_digest()),
    ] {
        let mut stream = app.jetstream.get_stream(name).await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        assert_eq!(config.subjects, [subject], "{name}");
        assert_eq!(
            config.storage,
            async_nats::jetstream::stream::StorageType::File,
            "{name}"
        );
        assert!(
            config.duplicate_window >= Duration::from_secs(120),
            "{name}"
        );
    }
    let mut events = app.jetstream.get_stream(&app.streams.events).await.unwrap();
    let events = events.info().await.unwrap().config.clone();
    assert_eq!(events.max_age, Duration::ZERO, "events are kept forever");
}

#[tokio::test]
async fn starting_again_is_harmless() {
    // A second set of services on the same database and prefix: migrations and stream set-up
    // must be idempotent (every service runs them at start).
    let app = TestApp::spawn().await;
    let args = TestApp::common_args(app.servers, &app.db_url, app.subjects.prefix());
    let config = <query_service::Config as clap::Parser>::try_parse_from(
        std::iter::once("query-service".to_owned())
            .chain(args)
            .chain([
                "--http-addr=127.0.0.1:0".to_owned(),
                tests::app::auth_flag(),
            ]),
    )
    .unwrap();
    let again = query_service::Application::build(config).await;
    assert!(again.is_ok(), "second start failed: {:?}", again.err());
}

#[tokio::test]
async fn services_stop_gracefully() {
    let app = TestApp::spawn().await;
    for result in app.stop().await {
        assert!(result.is_ok(), "{result:?}");
    }
}

#[tokio::test]
async fn readyz_reports_a_lagging_projection_and_recovers() {
    let mut app = TestApp::spawn().await;
    app.stop_projections().await;
    tests::client::accepted(
        &app.send(
            "account.open",
            serde_json::json!({"account_id": "lag", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    app.wait_for_stream_count(1, Duration::from_secs(10)).await;
    // A query-service that tolerates no lag at all.
    let flags = app.service_flags();
    let strict = <query_service::Config as clap::Parser>::try_parse_from(
        std::iter::once("query-service".to_owned())
            .chain(flags.iter().cloned())
            .chain([
                "--http-addr=127.0.0.1:0".to_owned(),
                "--ready-projection-lag-max=0".to_owned(),
                tests::app::auth_flag(),
            ]),
    )
    .unwrap();
    let strict = query_service::Application::build(strict).await.unwrap();
    let strict_url = format!("http://{}/readyz", strict.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let strict = tokio::spawn(strict.run(stop.clone()));

    let response = app.http.get(&strict_url).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["checks"][2]["name"], "projection_lag");
    assert!(
        body["checks"][2]["reason"]
            .as_str()
            .unwrap()
            .contains("1 events behind")
    );

    // The projection catches up: ready again.
    let projections = <projections::Config as clap::Parser>::try_parse_from(
        std::iter::once("projections".to_owned())
            .chain(flags)
            .chain(["--ops-addr=127.0.0.1:0".to_owned()]),
    )
    .unwrap();
    let projections = projections::Application::build(projections).await.unwrap();
    let worker = tokio::spawn(projections.run(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.http.get(&strict_url).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    strict.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
}
