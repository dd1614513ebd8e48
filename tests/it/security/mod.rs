//! Nobody writes or reads what they should not: tokens, scopes, owners and rates, on every
//! command subject and every HTTP endpoint, against the real services.

mod bounds;
mod commands;
mod hostile;
mod http;
mod http_bounds;
mod nats;

use async_nats::HeaderMap;
use domain::CommandReply;
use platform::auth::Scope;
use serde_json::Value;
use tests::TestApp;
use tests::app::{TEST_AUTH_SECRET, mint_token};

/// A token that fails for `reason`, and what the services must answer.
pub fn bad_tokens() -> Vec<(&'static str, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |secret: &str, audience: &str, issued: u64| {
        platform::auth::mint_hs256(
            secret.as_bytes(),
            "tally-dev",
            audience,
            "mallory",
            &[Scope::Admin],
            None,
            issued,
            600,
        )
        .unwrap()
    };
    vec![
        ("expired", mint(TEST_AUTH_SECRET, "tally", now - 7_200)),
        (
            "wrong signature",
            mint("another-secret-of-sufficient-length-here", "tally", now),
        ),
        ("wrong audience", mint(TEST_AUTH_SECRET, "elsewhere", now)),
        ("garbage", "not-a-jwt".to_owned()),
    ]
}

/// Sends `body` as `command` with `token`, or with none at all.
pub async fn send_as(
    app: &TestApp,
    command: &str,
    body: &Value,
    token: Option<&str>,
) -> CommandReply {
    let mut headers = HeaderMap::new();
    // An explicit empty value stands for "no token": the helper adds the admin's otherwise.
    headers.insert(
        "Authorization",
        token
            .map_or(String::new(), |t| format!("Bearer {t}"))
            .as_str(),
    );
    app.send_raw(command, headers, serde_json::to_vec(body).unwrap())
        .await
}

pub fn token(scopes: &[Scope], owner: Option<&str>) -> String {
    mint_token("tester", scopes, owner)
}

/// NATS users of `deploy/nats-server.conf`, each with the variable holding its password.
pub const NATS_USERS: [(&str, &str); 6] = [
    ("tally-client", "TALLY_NATS_CLIENT_PASSWORD"),
    ("tally-operator", "TALLY_NATS_OPERATOR_PASSWORD"),
    ("command-service", "TALLY_NATS_COMMAND_SERVICE_PASSWORD"),
    ("projections", "TALLY_NATS_PROJECTIONS_PASSWORD"),
    ("process-manager", "TALLY_NATS_PROCESS_MANAGER_PASSWORD"),
    ("query-service", "TALLY_NATS_QUERY_SERVICE_PASSWORD"),
];

/// The whole stack on a NATS server of its own with `deploy/nats-server.conf`'s users and
/// permissions; `app.nats` is logged in as `tally-client`.
pub struct Secured {
    pub app: tests::TestApp,
    pub access: tests::app::NatsAccess,
    server: tests::nats_server::NatsServer,
    _dir: tempfile::TempDir,
}

impl Secured {
    pub async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let passwords: std::collections::HashMap<String, String> = NATS_USERS
            .iter()
            .map(|(user, _)| {
                (
                    (*user).to_owned(),
                    uuid::Uuid::new_v4().simple().to_string(),
                )
            })
            .collect();
        let env: Vec<(String, String)> = NATS_USERS
            .iter()
            .map(|(user, var)| ((*var).to_owned(), passwords[*user].clone()))
            .collect();
        let server = tests::nats_server::NatsServer::start_with_config(
            dir.path(),
            &tests::binaries::repo_root().join("deploy/nats-server.conf"),
            &env,
        )
        .unwrap();
        let access = tests::app::NatsAccess {
            url: server.url(),
            passwords,
        };
        let app = tests::TestApp::spawn_with_nats(access.clone()).await;
        Secured {
            app,
            access,
            server,
            _dir: dir,
        }
    }

    /// A new connection as `user` with that user's inbox prefix, and the server errors it gets
    /// (permission violations arrive this way).
    pub async fn connect(
        &self,
        user: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        self.connect_with_inbox(user, &format!("_INBOX_{user}"))
            .await
    }

    /// As [`Secured::connect`], with an inbox prefix of the caller's choosing.
    pub async fn connect_with_inbox(
        &self,
        user: &str,
        inbox_prefix: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (sender, errors) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            self.access.password(user),
        )
        .custom_inbox_prefix(inbox_prefix)
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = sender.send(error.to_string());
                }
            }
        })
        .connect(self.access.url.as_str())
        .await
        .unwrap();
        (client, errors)
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
    }
}

/// The next server error of a connection, lower-cased (empty if none comes within 5 s).
pub async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(5), errors.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_lowercase()
}

/// Publishes `body` durably on `subject` with the admin's token, `id` as its `Nats-Msg-Id`
/// and, if given, `reply_to` as the inbox for its result; returns once the stream stored it.
pub async fn publish_durable_as_admin(
    client: &async_nats::Client,
    subject: &str,
    id: uuid::Uuid,
    reply_to: Option<&str>,
    body: &serde_json::Value,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    if let Some(inbox) = reply_to {
        headers.insert("Tally-Reply-To", inbox);
    }
    headers.insert(
        "Authorization",
        format!("Bearer {}", tests::app::admin_token()).as_str(),
    );
    async_nats::jetstream::new(client.clone())
        .publish_with_headers(
            subject.to_owned(),
            headers,
            serde_json::to_vec(body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}
