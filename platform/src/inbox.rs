//! Reply inboxes: the prefix each NATS user's connections use, and whether a reply subject is
//! an inbox at all. Services answer only inboxes: a reply subject is chosen by the requester,
//! and answering any other subject would publish there with the service's own rights.

use crate::nats::NatsError;

/// Every inbox prefix starts with this; a reply subject that does not is nobody's inbox.
pub const INBOX_PREFIX_BASE: &str = "_INBOX";

/// The prefix of a connection's reply inboxes: `configured`, else `_INBOX_<user>`, else
/// `_INBOX`. Refused unless it is [`INBOX_PREFIX_BASE`] alone or followed by `_<name>`, so
/// permissions can grant `<prefix>.>` and a reply subject can be recognised as an inbox.
pub fn inbox_prefix(user: Option<&str>, configured: Option<&str>) -> Result<String, NatsError> {
    let prefix = match (configured, user) {
        (Some(configured), _) => configured.to_owned(),
        (None, Some(user)) => format!("{INBOX_PREFIX_BASE}_{user}"),
        (None, None) => INBOX_PREFIX_BASE.to_owned(),
    };
    if is_inbox_prefix(&prefix) {
        Ok(prefix)
    } else {
        Err(NatsError::InboxPrefix(prefix))
    }
}

fn is_inbox_prefix(token: &str) -> bool {
    match token.strip_prefix(INBOX_PREFIX_BASE) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|name| (1..=64).contains(&name.len()) && name.bytes().all(is_name_byte)),
        None => false,
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Longest reply subject answered; a NATS client's inbox is far shorter.
pub const REPLY_SUBJECT_MAX_BYTES: usize = 256;

/// The first token of the reply subjects nats-server makes for requests that cross from
/// another account through a service import (`_R_.<random>.<random>`): it routes the answer
/// back to the requester's own reply subject, in the requester's account.
pub const SERVICE_IMPORT_REPLY_PREFIX: &str = "_R_";

/// Whether `subject` is a reply inbox as NATS clients make them: an inbox prefix
/// (`_INBOX`, `_INBOX_<name>`), or the server's `_R_` for a request from another account, and 1
/// to 6 more tokens of letters, digits, `_` and `-`. A service replies only to such subjects: a
/// request naming an event, audit, result or JetStream API subject as its "inbox" would
/// otherwise make the service publish there with its own rights.
pub fn is_inbox_subject(subject: &str) -> bool {
    if subject.len() > REPLY_SUBJECT_MAX_BYTES {
        return false;
    }
    let mut tokens = subject.split('.');
    let prefix_ok = tokens
        .next()
        .is_some_and(|t| t == SERVICE_IMPORT_REPLY_PREFIX || is_inbox_prefix(t));
    let rest: Vec<&str> = tokens.collect();
    prefix_ok
        && (1..=6).contains(&rest.len())
        && rest
            .iter()
            .all(|t| !t.is_empty() && t.bytes().all(is_name_byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_prefixes_follow_the_user() {
        assert_eq!(inbox_prefix(None, None).ok().as_deref(), Some("_INBOX"));
        assert_eq!(
            inbox_prefix(Some("tally-client"), None).ok().as_deref(),
            Some("_INBOX_tally-client")
        );
        assert_eq!(
            inbox_prefix(Some("a.b"), Some("_INBOX_ab")).ok().as_deref(),
            Some("_INBOX_ab")
        );
        assert!(inbox_prefix(Some("a.b"), None).is_err());
        assert!(inbox_prefix(Some("*"), None).is_err());
        assert!(inbox_prefix(None, Some("tally.evt")).is_err());
        assert!(inbox_prefix(None, Some("_INBOXX")).is_err());
    }

    #[test]
    fn only_inboxes_are_reply_subjects() {
        for ok in [
            "_INBOX.abc",
            "_INBOX.Nuid123.tok",
            "_INBOX_tally-client.Xy9.z",
            "_R_.aB3dE9.x0YzQ1",
            "_R_.aB3dE9.x0YzQ1.Sh4sh.T",
        ] {
            assert!(is_inbox_subject(ok), "{ok}");
        }
        for hostile in [
            "tally.evt.account.x",
            "tally.results.1",
            "tally.audit.digest",
            "$JS.API.STREAM.PURGE.TALLY_EVENTS",
            "_INBOX",
            "_INBOX.",
            "_INBOX..a",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX.a.*",
            "_INBOXES.a",
            "_INBOX_.a",
            "_INBOX.a b",
            "_INBOX.1.2.3.4.5.6.7",
            "_R_",
            "_R_.>",
            "_R_X.a",
        ] {
            assert!(!is_inbox_subject(hostile), "{hostile}");
        }
        assert!(!is_inbox_subject(&format!("_INBOX.{}", "a".repeat(300))));
    }
}
