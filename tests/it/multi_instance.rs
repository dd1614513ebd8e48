//! Many instances, same answers (issue 23, part 3): two instances of a service on a real 3-node
//! NATS cluster with R3 streams (`deploy/nats-server.conf`'s users and permissions), killed with
//! SIGKILL where it matters, giving the same answers one instance gives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use cqrs_es::Aggregate;
use domain::CommandReply;
use domain::transfer::{Transfer, TransferEvent, TransferStatus};
use futures::StreamExt;
use serde_json::{Value, json};
use tests::TestApp;
use tests::app::{NatsAccess, ServiceProcess};
use tests::client::accepted;
use tests::nats_server::NatsCluster;
use uuid::Uuid;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The stack on a 3-node cluster of its own: every service with all three URLs and
/// `--stream-replicas=3`.
struct OnCluster {
    app: TestApp,
    cluster: NatsCluster,
    access: NatsAccess,
    _dir: tempfile::TempDir,
}

impl OnCluster {
    async fn start() -> OnCluster {
        let dir = tempfile::tempdir().unwrap();
        let passwords: HashMap<String, String> = crate::security::NATS_USERS
            .iter()
            .map(|(user, _)| ((*user).to_owned(), Uuid::new_v4().simple().to_string()))
            .collect();
        let env: Vec<(String, String)> = crate::security::NATS_USERS
            .iter()
            .map(|(user, var)| ((*var).to_owned(), passwords[*user].clone()))
            .collect();
        let store = dir.path().to_path_buf();
        let cluster = tokio::task::spawn_blocking(move || {
            NatsCluster::start(
                &store,
                Some(&tests::binaries::repo_root().join("deploy/nats-server.conf")),
                &env,
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("3-node NATS cluster: {e}"));
        let access = NatsAccess {
            url: cluster.urls(),
            passwords,
        };
        let app =
            TestApp::spawn_with_nats_and_flags(access.clone(), &["--stream-replicas=3"]).await;
        OnCluster {
            app,
            cluster,
            access,
            _dir: dir,
        }
    }

    /// JetStream as the command-service's user: it may read stream state and the events.
    async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.access.connect_as("command-service").await)
    }

    /// `n` instances of `service` as real binaries, ready.
    async fn instances(&self, service: &str, n: usize, extra: &[&str]) -> Vec<ServiceProcess> {
        let mut started: Vec<ServiceProcess> = (0..n)
            .map(|_| self.app.start_binary(service, extra))
            .collect();
        for instance in &mut started {
            instance.wait_ready(READY_TIMEOUT).await;
        }
        started
    }
}

/// The sum of every sample of `metric` on an instance's `/metrics`.
async fn metric_sum(http: &reqwest::Client, instance: &ServiceProcess, metric: &str) -> f64 {
    let text = http
        .get(format!("{}/metrics", instance.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET an account from one query-service instance, with a consistency token if given.
async fn read_account(app: &TestApp, base: &str, account: &str, token: Option<&str>) -> Value {
    let mut request = app.http.get(format!("{base}/v1/accounts/{account}"));
    if let Some(token) = token {
        request = request
            .header("Tally-Consistency-Token", token)
            .header("Tally-Wait-Ms", "5000");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {account} on {base}");
    response.json().await.unwrap()
}

/// Read-your-writes on whichever query-service instance answers: each instance caches the
/// account row before a write (so a stale row sits in its memory), then both read with the
/// write's consistency token and must show it; the cache of each must have been used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_holds_on_every_query_service_instance() {
    let on = OnCluster::start().await;
    let app = &on.app;
    let second = on.instances("query-service", 1, &[]).await;
    let instances = [app.http_base.clone(), second[0].base_url()];
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "ryw", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let (_, version) = accepted(
        &app.send("account.deposit", json!({"account_id": "ryw", "amount": 1}))
            .await,
    );
    let token = format!("account:ryw:{version}");
    for base in &instances {
        read_account(app, base, "ryw", Some(&token)).await;
    }
    let mut balance = 1;
    for i in 0..40 {
        // Both instances hold the current row in memory before the write.
        for base in &instances {
            let before = read_account(app, base, "ryw", None).await;
            assert_eq!(
                before["balance"], balance,
                "stale before write {i} on {base}"
            );
        }
        let amount = i + 2;
        let reply = app
            .send(
                "account.deposit",
                json!({"account_id": "ryw", "amount": amount}),
            )
            .await;
        let (_, version) = accepted(&reply);
        let CommandReply::Accepted {
            consistency_token, ..
        } = &reply
        else {
            unreachable!()
        };
        balance += amount;
        // Alternately A then B, and B then A: whichever answers first or second shows it.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for n in order {
            let after = read_account(app, &instances[n], "ryw", Some(consistency_token)).await;
            assert_eq!(
                (after["version"].as_u64(), after["balance"].as_i64()),
                (Some(version), Some(balance)),
                "write {i} not shown by instance {n} ({})",
                instances[n]
            );
        }
    }
    // The second instance served from memory at all (the test exercised its cache).
    let hits = metric_sum(&app.http, &second[0], "tally_read_cache_hits_total").await;
    assert!(hits > 0.0, "query-service B never served from its cache");
}

/// Where durable command results go (the command-service may publish to client inboxes only).
const RESULTS: &str = "_INBOX_tally-client.multi";

async fn publish_durable(
    js: &jetstream::Context,
    command: &str,
    id: Uuid,
    body: &Value,
) -> jetstream::context::PublishAckFuture {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    headers.insert("Tally-Reply-To", format!("{RESULTS}.{id}").as_str());
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    js.publish_with_headers(
        format!("tally.jobs.{command}"),
        headers,
        serde_json::to_vec(body).unwrap().into(),
    )
    .await
    .unwrap()
}

/// Publishes deposits of `amounts` on `account` pipelined, then waits for the stream's acks;
/// returns their command ids.
async fn publish_deposits(
    js: &jetstream::Context,
    account: &str,
    amounts: std::ops::RangeInclusive<i64>,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut acks = Vec::new();
    for amount in amounts {
        let id = Uuid::new_v4();
        acks.push(
            publish_durable(
                js,
                "account.deposit",
                id,
                &json!({"account_id": account, "amount": amount}),
            )
            .await,
        );
        ids.push(id);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    ids
}

/// Durable commands of one account keep their order when the instance that holds the pin is
/// SIGKILLed with commands in hand and another takes over: deposits 1..=N run in publication
/// order, each once, and a withdrawal of their sum published last succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_commands_keep_account_order_when_the_pinned_instance_dies() {
    const FIRST: i64 = 300;
    const TOTAL: i64 = 400;
    let mut on = OnCluster::start().await;
    on.app.stop_command_service().await;
    let mut instances = on.instances("command-service", 2, &[]).await;
    let app = &on.app;
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": "dur", "owner": "o", "currency": "EUR"}),
        )
        .await,
    );
    let mut results = app.nats.subscribe(format!("{RESULTS}.>")).await.unwrap();
    let js = &app.jetstream;
    let mut answered = [0.0; 2];
    for (i, instance) in instances.iter().enumerate() {
        answered[i] = metric_sum(&app.http, instance, "tally_commands_total").await;
    }

    let mut ids = publish_deposits(js, "dur", 1..=FIRST).await;
    let mut replies: HashMap<Uuid, Vec<CommandReply>> = HashMap::new();
    while replies.len() < 30 {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(30), results.next()).await
        else {
            let consumer = on
                .jetstream()
                .await
                .get_stream("TALLY_COMMANDS")
                .await
                .unwrap()
                .consumer_info("command-service")
                .await
                .map(|i| format!("{i:?}"));
            panic!(
                "{} durable results within 30 s; consumer: {consumer:?}",
                replies.len()
            );
        };
        let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
        replies.entry(reply.command_id()).or_default().push(reply);
    }
    // The pinned instance is the one running them: kill it with commands in hand.
    for (i, instance) in instances.iter().enumerate() {
        answered[i] = metric_sum(&app.http, instance, "tally_commands_total").await - answered[i];
    }
    let pinned = usize::from(answered[1] > answered[0]);
    instances[pinned].kill();
    let at_kill = replies.len();
    eprintln!("killed instance {pinned} (answered {answered:?}) after {at_kill} results");
    assert!(
        at_kill < usize::try_from(FIRST).unwrap(),
        "every command ran before the kill: nothing was in hand"
    );
    ids.extend(publish_deposits(js, "dur", FIRST + 1..=TOTAL).await);
    let withdrawal = Uuid::new_v4();
    publish_durable(
        js,
        "account.withdraw",
        withdrawal,
        &json!({"account_id": "dur", "amount": TOTAL * (TOTAL + 1) / 2}),
    )
    .await
    .await
    .unwrap();
    ids.push(withdrawal);

    // Everything answered: the pin moves within its timeout, what the dead instance held is
    // redelivered after the ack wait.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.iter().any(|id| !replies.contains_key(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(message)) = tokio::time::timeout(left, results.next()).await else {
            panic!(
                "{} of {} durable commands answered within 120 s",
                replies.len(),
                ids.len()
            );
        };
        let reply: CommandReply = serde_json::from_slice(&message.payload).unwrap();
        replies.entry(reply.command_id()).or_default().push(reply);
    }
    // A command answered twice (run by the dead instance, its ack lost) has the same answer.
    for (i, id) in ids.iter().enumerate() {
        let first = &replies[id][0];
        assert!(
            matches!(first, CommandReply::Accepted { .. }),
            "command {i} answered {first:?}"
        );
        assert!(
            replies[id].iter().all(|r| r == first),
            "command {i} answered differently: {:?}",
            replies[id]
        );
    }
    // Executed once each, in publication order.
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events WHERE aggregate_id = 'dur' AND aggregate_type = 'account'
         ORDER BY sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let deposits: Vec<i64> = rows
        .iter()
        .filter(|(kind, _)| kind == "MoneyDeposited")
        .map(|(_, payload)| payload["MoneyDeposited"]["amount"].as_i64().unwrap())
        .collect();
    let published: Vec<i64> = (1..=TOTAL).collect();
    if deposits != published {
        let first_out = deposits
            .iter()
            .zip(&published)
            .position(|(a, b)| a != b)
            .unwrap_or(deposits.len());
        panic!(
            "deposits not in publication order: {} stored, first difference at {first_out}: {:?}",
            deposits.len(),
            &deposits[first_out.saturating_sub(2)..(first_out + 5).min(deposits.len())]
        );
    }
    assert_eq!(
        rows.last().map(|(kind, _)| kind.as_str()),
        Some("MoneyWithdrawn")
    );
    assert_eq!(rows.len(), ids.len() + 1, "open, deposits, withdrawal");
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(logged, i64::try_from(ids.len()).unwrap());
    drop(instances);
}

/// Transfers settled step by step with two process-manager instances, one SIGKILLed mid-run:
/// every transfer finishes, each step is recorded once, and no money is created or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_process_managers_finish_every_transfer_without_a_step_twice() {
    const ACCOUNTS: usize = 10;
    const OPENING: i64 = 1_000;
    const TRANSFERS: usize = 300;
    let mut on = OnCluster::start().await;
    on.app.stop_command_service().await;
    on.app
        .start_command_service(&["--transfer-settlement=steps"])
        .await;
    on.app.stop_process_manager().await;
    let mut managers = on.instances("process-manager", 2, &[]).await;
    let app = Arc::new(on.app);
    for a in 0..ACCOUNTS {
        crate::transfers::open(&app, &format!("p{a}"), "EUR", OPENING).await;
    }
    let mut sends = Vec::new();
    for t in 0..TRANSFERS {
        let app = Arc::clone(&app);
        sends.push(tokio::spawn(async move {
            let from = t % ACCOUNTS;
            let to = (from + 1 + t / ACCOUNTS % (ACCOUNTS - 1)) % ACCOUNTS;
            let amount = 1 + i64::try_from(t * 37 % 400).unwrap();
            let reply = crate::transfers::request(
                &app,
                Uuid::now_v7(),
                &format!("p{from}"),
                &format!("p{to}"),
                amount,
            )
            .await;
            accepted(&reply);
        }));
    }
    let finished = async |app: &TestApp| -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'transfer'
             AND event_type IN ('TransferCompleted', 'TransferFailed')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished(&app).await < 20 {
        assert!(Instant::now() < deadline, "transfers do not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    managers[0].kill();
    let at_kill = finished(&app).await;
    eprintln!("killed a process manager with {at_kill} of {TRANSFERS} transfers finished");
    for send in sends {
        send.await.unwrap();
    }
    assert!(
        at_kill < i64::try_from(TRANSFERS).unwrap(),
        "every transfer finished before the kill"
    );
    // The survivor finishes them, the dead one's events coming back after the ack wait.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = finished(&app).await;
        if done == i64::try_from(TRANSFERS).unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {TRANSFERS} transfers finished within 120 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each step once: on the accounts (what `transfer_steps_recorded` probes) and on the
    // transfers.
    let twice: Vec<(Option<String>, String, String, i64)> = sqlx::query_as(
        "SELECT payload -> event_type ->> 'transfer_id', aggregate_id, event_type, count(*)
         FROM events WHERE aggregate_type = 'account'
           AND event_type IN ('TransferDebited', 'TransferCredited', 'TransferRefunded', 'TransferSettled')
         GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(twice.is_empty(), "account steps recorded twice: {twice:?}");
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, count(*) FROM events WHERE aggregate_type = 'transfer'
         GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(twice.is_empty(), "transfer steps recorded twice: {twice:?}");
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, payload FROM events WHERE aggregate_type = 'transfer'
         ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut transfers: HashMap<String, Transfer> = HashMap::new();
    for (id, payload) in rows {
        let event: TransferEvent = serde_json::from_value(payload).unwrap();
        transfers.entry(id).or_default().apply(event);
    }
    assert_eq!(transfers.len(), TRANSFERS);
    assert!(
        transfers
            .values()
            .all(|t| matches!(t.status, TransferStatus::Completed | TransferStatus::Failed))
    );
    let money: Option<i64> = sqlx::query_scalar(
        "SELECT sum(CASE event_type
            WHEN 'MoneyDeposited' THEN (payload->'MoneyDeposited'->>'amount')::bigint
            WHEN 'TransferDebited' THEN -(payload->'TransferDebited'->>'amount')::bigint
            WHEN 'TransferCredited' THEN (payload->'TransferCredited'->>'amount')::bigint
            WHEN 'TransferRefunded' THEN (payload->'TransferRefunded'->>'amount')::bigint
            ELSE 0 END)::bigint
         FROM events WHERE aggregate_type = 'account'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        money,
        Some(OPENING * i64::try_from(ACCOUNTS).unwrap()),
        "money created or lost"
    );
    drop(managers);
}

/// A stream's info, asking again while the cluster elects leaders (the JetStream API times out
/// meanwhile); bounded by 30 s.
async fn stream_info(js: &jetstream::Context, name: &str) -> jetstream::stream::Info {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = match js.get_stream(name).await {
            Ok(mut stream) => stream.info().await.cloned().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match info {
            Ok(info) => return info,
            Err(e) => assert!(Instant::now() < deadline, "{name} info: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a deposit until it gets an answer other than `unavailable`, with the same command id
/// each time (a kill may leave it unanswered); bounded by 60 s.
async fn deposit_until_answered(app: &TestApp, account: &str) -> CommandReply {
    let id = Uuid::new_v4();
    let subject = "tally.cmd.account.deposit";
    let payload: bytes::Bytes = serde_json::to_vec(&json!({"account_id": account, "amount": 1}))
        .unwrap()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "deposit {id} never answered");
        let mut headers = HeaderMap::new();
        headers.insert("Tally-Command-Id", id.to_string().as_str());
        headers.insert(
            "Authorization",
            format!("Bearer {}", tests::app::admin_token()).as_str(),
        );
        let request = app
            .nats
            .request_with_headers(subject, headers, payload.clone());
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(3), request).await
            && let Ok(reply) = serde_json::from_slice::<CommandReply>(&response.payload)
            && tests::client::rejected_code_if_any(&reply) != Some(domain::ErrorCode::Unavailable)
        {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every Tally stream has 3 replicas; SIGKILL of the node leading `TALLY_EVENTS` under load
/// loses no event and duplicates none (stream == store), and the services carry on by
/// themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_streams_survive_the_events_leader_being_killed() {
    const ACCOUNTS: usize = 5;
    const SENDERS: usize = 4;
    const BEFORE_KILL: u64 = 100;
    const AFTER_KILL: u64 = 100;
    let on = OnCluster::start().await;
    let js = on.jetstream().await;
    let streams = on.app.streams.clone();
    for name in [
        &streams.events,
        &streams.commands,
        &streams.audit,
        &streams.dead_letters,
    ] {
        let info = stream_info(&js, name).await;
        assert_eq!(info.config.num_replicas, 3, "{name} replicas");
        let cluster = info.cluster.expect("clustered stream");
        assert_eq!(
            cluster.replicas.len(),
            2,
            "{name}: 2 followers besides the leader"
        );
    }
    for a in 0..ACCOUNTS {
        accepted(
            &on.app
                .send(
                    "account.open",
                    json!({"account_id": format!("r{a}"), "owner": "o", "currency": "EUR"}),
                )
                .await,
        );
    }

    // The senders share the stack; the cluster stays here, to be killed in.
    let OnCluster {
        app,
        mut cluster,
        _dir,
        ..
    } = on;
    let app = Arc::new(app);
    let accepted_count = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (app, count, stop) = (Arc::clone(&app), Arc::clone(&accepted_count), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut i = s;
            let mut last_token = HashMap::new();
            while !stop.is_cancelled() {
                let account = format!("r{}", i % ACCOUNTS);
                let reply = deposit_until_answered(&app, &account).await;
                accepted(&reply);
                if let CommandReply::Accepted {
                    consistency_token, ..
                } = reply
                {
                    last_token.insert(account, consistency_token);
                }
                count.fetch_add(1, Ordering::SeqCst);
                i += SENDERS;
            }
            last_token
        }));
    }
    let wait_for = async |n: u64, within: Duration| {
        let deadline = Instant::now() + within;
        while accepted_count.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{} accepted, waiting for {n}",
                accepted_count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    wait_for(BEFORE_KILL, Duration::from_secs(60)).await;
    let leader = stream_info(&js, &streams.events)
        .await
        .cluster
        .and_then(|c| c.leader)
        .expect("TALLY_EVENTS has a leader");
    let node = cluster.node_named(&leader).unwrap();
    let in_stream_at_kill = stream_info(&js, &streams.events).await.state.messages;
    let killed_at = Instant::now();
    let at_kill = accepted_count.load(Ordering::SeqCst);
    cluster.kill_node(node);
    wait_for(at_kill + 1, Duration::from_secs(60)).await;
    let outage = killed_at.elapsed();
    // Commands keep coming until the relay publishes under the new leader, so they span the
    // election (commands are accepted meanwhile: their events wait in the table).
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_info(&js, &streams.events).await.state.messages < in_stream_at_kill + 20 {
        assert!(
            Instant::now() < deadline,
            "the relay published nothing within 60 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish_outage = killed_at.elapsed();
    wait_for(at_kill + AFTER_KILL, Duration::from_secs(60)).await;
    stop.cancel();
    let mut tokens: HashMap<String, String> = HashMap::new();
    for sender in senders {
        tokens.extend(sender.await.unwrap());
    }
    eprintln!(
        "killed {leader} (leading {}): next command accepted {outage:?} later, events published again {publish_outage:?} later; {} accepted",
        streams.events,
        accepted_count.load(Ordering::SeqCst)
    );

    // Every event in the stream once: as many messages as stored events, each id once.
    let in_store = u64::try_from(app.events_in_store().await).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let state = stream_info(&js, &streams.events).await.state;
        if state.messages >= in_store {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "stream has {} of {in_store} events 60 s after the kill",
            state.messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stream = js.get_stream(&streams.events).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(ids.insert(id.clone()), "{id} twice in the stream");
    }
    let stored: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT aggregate_type, aggregate_id, sequence FROM events")
            .fetch_all(&app.db)
            .await
            .unwrap();
    for (kind, id, sequence) in &stored {
        let msg_id = format!("{kind}:{id}:{sequence}");
        assert!(ids.contains(&msg_id), "{msg_id} is missing from the stream");
    }
    assert_eq!(state.messages, in_store, "stream == store");

    // The services recovered by themselves: the read model shows every account's last write,
    // and every instance is ready.
    for (account, token) in &tokens {
        read_account(&app, &app.http_base, account, Some(token)).await;
    }
    let deposited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'MoneyDeposited'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let balance: Option<i64> = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if balance == Some(deposited) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read model balance {balance:?}, deposited {deposited}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        assert_eq!(
            response.status(),
            200,
            "{addr} ready after the leader change"
        );
    }
    let new_leader = stream_info(&js, &streams.events)
        .await
        .cluster
        .and_then(|c| c.leader);
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()));
}
