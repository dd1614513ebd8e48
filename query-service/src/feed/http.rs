//! The feed endpoints: who may follow what, from where, and the SSE response.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use platform::auth::Principal;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::Feeds;
use super::cursor::{self, Positions};
use super::hub::{Key, Refused};
use super::session::{self, Follow, Timing};
use crate::problem::{ApiError, Problem};

const LAST_EVENT_ID: &str = "last-event-id";
/// How long an EventSource waits before reconnecting.
const RETRY: Duration = Duration::from_secs(1);

/// One Server-Sent Event of a feed, as the wire carries it (each field a line).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: the feed writes these lines itself
pub struct FeedEvent {
    /// `change`, `reset` or `end` (absent on the first, `retry`-only, event).
    #[schema(pattern = "^(change|reset|end)$")]
    event: Option<String>,
    /// The cursor to resume after this event (`Last-Event-ID`); on `change` events.
    id: Option<String>,
    /// JSON: a `Change` for `change`; `{"reason", "detail"}` for `reset` and `end` (reasons of
    /// `end`: `slow_reader`, `max_age`, `shutdown`, `unavailable`).
    data: Option<String>,
    /// Milliseconds an EventSource waits before reconnecting.
    retry: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountFeedQuery {
    /// Resume after this change (an event's `id`, or a command reply's consistency token for
    /// this account); `Last-Event-ID` takes precedence.
    pub after: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerFeedQuery {
    /// The owner whose accounts to follow; a token bound to an owner may only name its own
    /// (and may leave it out).
    pub owner: Option<String>,
    /// Resume after this event's `id`; `Last-Event-ID` takes precedence.
    pub after: Option<String>,
}

/// The cursor the request resumes from, if any.
fn resume_from<'a>(headers: &'a HeaderMap, after: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .or(after)
        .filter(|c| !c.is_empty())
}

/// Each change of one account as the read model applies it (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/feed",
    tag = "feed",
    params(("account_id" = String, Path), AccountFeedQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = FeedEvent,
         description = "`event: change` per change (data: the JSON object), `event: reset`, and a last `event: end` saying why the server closed the stream; comment lines as heartbeats"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn account_feed(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(feeds): Extension<Feeds>,
    Path(account_id): Path<String>,
    query: Result<Query<AccountFeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let Query(query) = query?;
    let after = resume_from(&headers, query.after.as_deref())
        .map(|raw| cursor::account_version(raw, &account_id))
        .transpose()?;
    // Another owner's account is as absent as a missing one.
    if !crate::accounts::visible(&pool, &principal, &account_id).await? {
        return Err(ApiError::NotFound {
            what: format!("account {account_id}"),
        });
    }
    let key = Key::Account(account_id.clone());
    let follow = Follow::Account {
        id: account_id,
        after,
    };
    open(pool, &feeds, &principal, key, follow)
}

/// Each change of every account of one owner (Server-Sent Events).
#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "feed",
    params(OwnerFeedQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = FeedEvent,
         description = "As the account feed; event ids are cursors over all the owner's accounts"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn owner_feed(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(feeds): Extension<Feeds>,
    query: Result<Query<OwnerFeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let Query(query) = query?;
    let owner = match (&principal.owner, query.owner) {
        (Some(bound), Some(asked)) if *bound != asked => {
            return Err(ApiError::Forbidden {
                detail: "a token bound to an owner follows only that owner's accounts".into(),
            });
        }
        (Some(bound), _) => bound.clone(),
        (None, Some(asked)) if !asked.is_empty() => asked,
        (None, _) => {
            return Err(ApiError::BadRequest {
                detail: "owner is required (a token not bound to an owner follows any one owner)"
                    .into(),
            });
        }
    };
    let after = resume_from(&headers, query.after.as_deref())
        .map(Positions::parse)
        .transpose()?;
    let accounts_max = feeds.config.owner_accounts_max;
    // Refused now, with a clear answer, rather than as the feed's first event.
    super::read::owner_accounts(&pool, &owner, accounts_max).await?;
    let key = Key::Owner(owner.clone());
    let follow = Follow::Owner {
        owner,
        after,
        accounts_max,
    };
    open(pool, &feeds, &principal, key, follow)
}

/// Takes the feed's place, starts its task, and answers with its events.
fn open(
    pool: PgPool,
    feeds: &Feeds,
    principal: &Principal,
    key: Key,
    follow: Follow,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let subscription = feeds
        .hub
        .subscribe(key, &principal.subject, !principal.is_admin())
        .map_err(|refused| match refused {
            Refused::PerToken(max) => ApiError::TooManyFeeds {
                detail: format!("this token already holds {max} feeds open; close one first"),
            },
            Refused::Total(max) => ApiError::Busy {
                detail: format!("this instance serves {max} feeds already; retry on another"),
            },
        })?;
    let config = &feeds.config;
    let (out, mut events) = mpsc::channel(usize::from(config.buffer_events));
    let (last, last_event) = oneshot::channel();
    let timing = Timing {
        slow_reader: Duration::from_millis(config.slow_reader_ms),
        max_age: Duration::from_millis(config.max_age_ms),
    };
    // Its own task: a client going away must not cancel a read half-way (docs: the sqlx
    // cancellation note); the task sees the client gone when its buffer closes.
    tokio::spawn(session::run(
        pool,
        subscription,
        follow,
        timing,
        out,
        last,
        feeds.shutdown.clone(),
        feeds.ended.clone(),
    ));
    let stream = futures::stream::once(async { Event::default().retry(RETRY) })
        .chain(futures::stream::poll_fn(move |cx| events.poll_recv(cx)))
        .chain(futures::stream::once(last_event).filter_map(|last| async move { last.ok() }))
        .map(Ok);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_millis(config.heartbeat_ms))
            .text("keep-alive"),
    ))
}
