//! A checked notification as the arguments of `twitch_sync.apply_eventsub`
//! (sql/eventsub.sql), which deduplicates it by message id and applies it as
//! one observation of the transition layer. Postgres-free: the database layer
//! binds these values as parameters.

use super::message::{Envelope, Message, StreamEvent};
use crate::streams::micros_to_rfc3339;

/// The parameters of `twitch_sync.apply_eventsub(message_id, message_at,
/// event, broadcaster_id, stream_id, login, started_at, notify)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventArgs {
    pub message_id: String,
    /// RFC 3339 (UTC), produced here from the checked timestamp.
    pub message_at: String,
    /// `online` or `offline`.
    pub event: &'static str,
    pub broadcaster_id: String,
    pub stream_id: Option<String>,
    pub login: Option<String>,
    pub started_at: Option<String>,
}

impl EventArgs {
    /// The arguments for a notification; None for any other message.
    pub fn of(env: &Envelope) -> Option<EventArgs> {
        let Message::Notification(n) = &env.message else {
            return None;
        };
        let message_at = micros_to_rfc3339(env.message_timestamp)?;
        Some(match &n.event {
            StreamEvent::Online {
                broadcaster_id,
                login,
                stream_id,
                started_at,
                ..
            } => EventArgs {
                message_id: env.message_id.clone(),
                message_at,
                event: "online",
                broadcaster_id: broadcaster_id.clone(),
                stream_id: Some(stream_id.clone()),
                login: login.clone(),
                started_at: started_at.and_then(micros_to_rfc3339),
            },
            StreamEvent::Offline {
                broadcaster_id,
                login,
                stream_id,
            } => EventArgs {
                message_id: env.message_id.clone(),
                message_at,
                event: "offline",
                broadcaster_id: broadcaster_id.clone(),
                stream_id: stream_id.clone(),
                login: login.clone(),
                started_at: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventsub::message::{Notification, SubscriptionInfo};

    fn env(event: StreamEvent) -> Envelope {
        Envelope {
            message_id: "m-1".into(),
            message_timestamp: 1_795_186_800_123_456,
            message: Message::Notification(Notification {
                subscription: SubscriptionInfo {
                    id: "s".into(),
                    status: "enabled".into(),
                    kind: "stream.online".into(),
                    broadcaster_id: "42".into(),
                    conduit_id: None,
                },
                event,
            }),
        }
    }

    #[test]
    fn online_and_offline_become_arguments() {
        let a = EventArgs::of(&env(StreamEvent::Online {
            broadcaster_id: "42".into(),
            login: Some("x".into()),
            stream_id: "7".into(),
            stream_type: "live".into(),
            started_at: Some(1_795_186_000_000_000),
        }))
        .unwrap();
        assert_eq!(a.event, "online");
        assert_eq!(a.message_at, "2026-11-20T15:00:00.123456Z");
        assert_eq!(a.stream_id.as_deref(), Some("7"));
        assert_eq!(a.started_at.as_deref(), Some("2026-11-20T14:46:40Z"));
        let b = EventArgs::of(&env(StreamEvent::Offline {
            broadcaster_id: "42".into(),
            login: None,
            stream_id: None,
        }))
        .unwrap();
        assert_eq!(
            (b.event, b.stream_id, b.started_at),
            ("offline", None, None)
        );
        assert_eq!(
            EventArgs::of(&Envelope {
                message_id: "k".into(),
                message_timestamp: 0,
                message: Message::Keepalive
            }),
            None
        );
    }
}
