//! The [`Plugin`] trait and the glue that exports it as the WIT `handler`.

use std::any::TypeId;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::exports::tenantry::plugin::handler::Guest;
use crate::bindings::exports::tenantry::plugin::job_events as wit_jobs;
use crate::bindings::exports::tenantry::plugin::notify_events as wit_notify;
use crate::bindings::exports::tenantry::plugin::presence_events as wit_presence;
use crate::bindings::exports::tenantry::plugin::task_events as wit_tasks;
use crate::bindings::tenantry::plugin::types as wit;
use crate::ctx::{ConnectRequest, Ctx, User};
use crate::error::{LiveError, ValidationIssue};
use crate::jobs::Job;
use crate::notify::Publication;
use crate::presence::PresenceEvent;
use crate::router::Router;
use crate::tasks::Task;

/// A Tenantry plugin: its handlers and its two hooks.
///
/// Implement it on a unit struct and export it with
/// [`export_plugin!`](crate::export_plugin). The host calls every method in a
/// fresh sandbox, so there is no state between calls except what the plugin
/// keeps in [`crate::Kv`].
pub trait Plugin {
    /// The `live()` handlers (see [`Router`]).
    fn router() -> Router;

    /// Decide who connects (svelte's `upgrade()`): `Ok(Some(user))` accepts
    /// an authenticated user, `Ok(None)` an anonymous one, and an error
    /// refuses the connection (`UNAUTHENTICATED` closes it with 4401,
    /// `FORBIDDEN` with 4403, any other code with 1008).
    ///
    /// The default accepts everyone anonymously.
    fn authenticate(request: &ConnectRequest) -> Result<Option<User>, LiveError> {
        let _ = request;
        Ok(None)
    }

    /// May this connection subscribe to `topic`? An error denies, and its
    /// code is sent to the client as the reason.
    ///
    /// The default denies every topic with `FORBIDDEN`: the gate fails closed,
    /// so a plugin opens exactly the topics it means to.
    fn authorize_subscribe(ctx: &Ctx, topic: &str) -> Result<(), LiveError> {
        let _ = ctx;
        Err(LiveError::forbidden(format!(
            "Subscribing to {topic} is not allowed"
        )))
    }

    /// Whether the host should call [`Plugin::on_presence`]. Default
    /// `false`: set it to `true` when you implement `on_presence`.
    const PRESENCE_EVENTS: bool = false;

    /// Presence events of the tenant, fleet-wide: users coming online on
    /// a topic and going offline, topics becoming occupied and vacated
    /// (see [`PresenceEvent`]). Debounced and flap-suppressed (a user who
    /// reconnects within a moment produces nothing) and delivered at least
    /// once, also when the user's host crashed: an error makes the host
    /// deliver the batch again later, so make the handling idempotent.
    /// There is no connection: imports that act on one (`presence::join`,
    /// `groups::join`) are refused. Called only when
    /// [`Plugin::PRESENCE_EVENTS`] is `true`.
    fn on_presence(events: &[PresenceEvent]) -> Result<(), LiveError> {
        let _ = events;
        Ok(())
    }

    /// The queues whose jobs the host gives to [`Plugin::on_job`] (see
    /// [`crate::jobs`]). Default: none.
    const JOB_QUEUES: &'static [&'static str] = &[];

    /// Run one job of a queue in [`Plugin::JOB_QUEUES`], in a fresh
    /// sandbox under the same limits as a call, with no connection. `Ok`
    /// completes the job; an error (or a trap or timeout) fails this
    /// attempt, and it is retried with backoff until it has had its
    /// attempts. Delivery is at least once: make it idempotent.
    ///
    /// The default fails every job with `NOT_FOUND`.
    fn on_job(job: &Job) -> Result<(), LiveError> {
        Err(LiveError::not_found(format!(
            "no handler for jobs of queue {}",
            job.queue
        )))
    }

    /// The task names the host gives to [`Plugin::on_task`] (see
    /// [`crate::tasks`]); only these can be started. Default: none.
    const TASKS: &'static [&'static str] = &[];

    /// Run one attempt of a task named in [`Plugin::TASKS`], in a fresh
    /// sandbox under the same limits as a call, with no connection. `Ok`
    /// commits the result (unless the task was taken over meanwhile); an
    /// error (or a trap or timeout) fails this attempt, and it is retried
    /// with backoff until it has had its attempts. A task whose host died
    /// runs again elsewhere: make it idempotent.
    ///
    /// The default fails every task with `NOT_FOUND`.
    fn on_task(task: &Task) -> Result<serde_json::Value, LiveError> {
        Err(LiveError::not_found(format!(
            "no handler for tasks named {}",
            task.name
        )))
    }

    /// Whether the host should bridge the tenant's notifications (its
    /// table changes, see [`crate::notify`]) to [`Plugin::on_notify`].
    /// Default `false`: set it to `true` to have them published.
    const NOTIFY_EVENTS: bool = false;

    /// One notification: a row of the tenant's notify outbox, written by
    /// the trigger of [`crate::notify::install_trigger`]
    /// (`{"topic", "event", "data"}`) or by [`crate::notify::send`].
    /// `Ok(None)` (the default) publishes `payload` as it is;
    /// `Ok(Some(publications))` publishes those instead (an empty list
    /// publishes nothing); it may also publish itself. An error drops the
    /// notification (delivery is at most once). There is no connection.
    /// Called only when [`Plugin::NOTIFY_EVENTS`] is `true`.
    fn on_notify(payload: &serde_json::Value) -> Result<Option<Vec<Publication>>, LiveError> {
        let _ = payload;
        Ok(None)
    }
}

/// The WIT `handler` implementation for any [`Plugin`]. Used by
/// [`export_plugin!`](crate::export_plugin); not part of the public API.
#[doc(hidden)]
pub struct Adapter<P>(PhantomData<P>);

thread_local! {
    /// The plugin's router, built on the first call of an instance and kept
    /// for the instance's later calls (when the host reuses instances).
    /// Keyed by the plugin type: a component exports one plugin.
    static ROUTER: RefCell<Option<(TypeId, Rc<Router>)>> = const { RefCell::new(None) };
}

/// `P`'s router, built once per instance.
fn router<P: Plugin + 'static>() -> Rc<Router> {
    ROUTER.with(|cell| {
        let mut slot = cell.borrow_mut();
        match &*slot {
            Some((id, router)) if *id == TypeId::of::<P>() => Rc::clone(router),
            _ => {
                let router = Rc::new(P::router());
                *slot = Some((TypeId::of::<P>(), Rc::clone(&router)));
                router
            }
        }
    })
}

fn user_from_wit(user: wit::User) -> User {
    let attributes = serde_json::from_str(&user.attributes)
        .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()));
    User {
        id: user.id,
        attributes,
    }
}

fn user_to_wit(user: User) -> wit::User {
    let attributes = match user.attributes {
        serde_json::Value::Null => "{}".to_owned(),
        other => other.to_string(),
    };
    wit::User {
        id: user.id,
        attributes,
    }
}

fn ctx_from_wit(ctx: wit::CallContext) -> Ctx {
    Ctx::new(
        ctx.user.map(user_from_wit),
        ctx.connection_id,
        ctx.request_id,
    )
}

fn error_to_wit(e: LiveError) -> wit::LiveError {
    wit::LiveError {
        code: e.code,
        message: e.message,
        issues: e.issues.map(|issues| {
            issues
                .into_iter()
                .map(|ValidationIssue { path, message }| wit::ValidationIssue { path, message })
                .collect()
        }),
        retry_after_ms: e.retry_after_ms,
    }
}

fn request_from_wit(r: wit::ConnectRequest) -> ConnectRequest {
    ConnectRequest {
        headers: r.headers,
        cookies: r.cookies,
        query: r.query,
        remote_address: r.remote_address,
        path: r.path,
    }
}

impl<P: Plugin + 'static> Guest for Adapter<P> {
    fn authenticate(request: wit::ConnectRequest) -> Result<Option<wit::User>, wit::LiveError> {
        P::authenticate(&request_from_wit(request))
            .map(|user| user.map(user_to_wit))
            .map_err(error_to_wit)
    }

    fn call(ctx: wit::CallContext, path: String, args: String) -> Result<String, wit::LiveError> {
        router::<P>()
            .call(&ctx_from_wit(ctx), &path, &args)
            .map_err(error_to_wit)
    }

    fn authorize_subscribe(ctx: wit::CallContext, topic: String) -> Result<(), wit::LiveError> {
        P::authorize_subscribe(&ctx_from_wit(ctx), &topic).map_err(error_to_wit)
    }
}

fn presence_event_from_wit(e: wit_presence::PresenceEvent) -> PresenceEvent {
    use wit_presence::PresenceChange as C;
    let user = e.user.unwrap_or_default();
    match e.change {
        C::UserOnline => PresenceEvent::UserOnline {
            topic: e.topic,
            user,
        },
        C::UserOffline => PresenceEvent::UserOffline {
            topic: e.topic,
            user,
        },
        C::TopicOccupied => PresenceEvent::TopicOccupied { topic: e.topic },
        C::TopicVacated => PresenceEvent::TopicVacated { topic: e.topic },
    }
}

impl<P: Plugin + 'static> wit_presence::Guest for Adapter<P> {
    fn on_presence(events: Vec<wit_presence::PresenceEvent>) -> Result<bool, wit::LiveError> {
        if !P::PRESENCE_EVENTS {
            return Ok(false);
        }
        if events.is_empty() {
            // The host's probe at load.
            return Ok(true);
        }
        let events: Vec<PresenceEvent> = events.into_iter().map(presence_event_from_wit).collect();
        P::on_presence(&events).map(|()| true).map_err(error_to_wit)
    }
}

impl<P: Plugin + 'static> wit_jobs::Guest for Adapter<P> {
    fn accepts_jobs() -> Vec<String> {
        P::JOB_QUEUES.iter().map(|q| (*q).to_owned()).collect()
    }

    fn on_job(job: wit_jobs::Job) -> Result<(), wit::LiveError> {
        let job = Job {
            id: job.id,
            queue: job.queue,
            payload_json: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            enqueued_at_ms: job.enqueued_at_ms,
        };
        P::on_job(&job).map_err(error_to_wit)
    }
}

impl<P: Plugin + 'static> wit_tasks::Guest for Adapter<P> {
    fn accepts_tasks() -> Vec<String> {
        P::TASKS.iter().map(|t| (*t).to_owned()).collect()
    }

    fn on_task(task: wit_tasks::Task) -> Result<String, wit::LiveError> {
        let task = Task {
            id: task.id,
            name: task.name,
            idempotency_key: task.idempotency_key,
            input_json: task.input,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            fence: task.fence,
            request_id: task.request_id,
        };
        P::on_task(&task)
            .map(|v| v.to_string())
            .map_err(error_to_wit)
    }
}

impl<P: Plugin + 'static> wit_notify::Guest for Adapter<P> {
    fn wants_notify() -> bool {
        P::NOTIFY_EVENTS
    }

    fn on_notify(payload: String) -> Result<Option<Vec<wit_notify::Publication>>, wit::LiveError> {
        let payload: serde_json::Value = serde_json::from_str(&payload).map_err(|e| {
            error_to_wit(LiveError::new(
                crate::codes::INVALID_REQUEST,
                format!("the notification is not JSON: {e}"),
            ))
        })?;
        let publications = P::on_notify(&payload).map_err(error_to_wit)?;
        Ok(publications.map(|list| {
            list.into_iter()
                .map(|p| wit_notify::Publication {
                    topic: p.topic,
                    event: p.event,
                    data: p.data.to_string(),
                })
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Default;
    impl Plugin for Default {
        fn router() -> Router {
            Router::new().live("a/who", |ctx: &Ctx, (): ()| Ok(ctx.user().cloned()))
        }
    }

    fn wit_ctx(user: Option<(&str, &str)>) -> wit::CallContext {
        wit::CallContext {
            user: user.map(|(id, attributes)| wit::User {
                id: id.into(),
                attributes: attributes.into(),
            }),
            connection_id: "c1".into(),
            request_id: "r1".into(),
        }
    }

    #[test]
    fn presence_events_are_declined_unless_asked_for() {
        use wit_presence::{Guest as _, PresenceChange, PresenceEvent as W};
        let event = W {
            change: PresenceChange::UserOffline,
            topic: "room:1".into(),
            user: Some("ann".into()),
        };
        assert!(matches!(Adapter::<Default>::on_presence(vec![]), Ok(false)));
        assert!(matches!(
            Adapter::<Default>::on_presence(vec![event.clone()]),
            Ok(false)
        ));

        struct Watcher;
        impl Plugin for Watcher {
            fn router() -> Router {
                Router::new()
            }
            const PRESENCE_EVENTS: bool = true;
            fn on_presence(events: &[PresenceEvent]) -> Result<(), LiveError> {
                match events {
                    [PresenceEvent::UserOffline { topic, user }]
                        if topic == "room:1" && user == "ann" =>
                    {
                        Err(LiveError::new("RETRY", "later"))
                    }
                    _ => Ok(()),
                }
            }
        }
        assert!(
            matches!(Adapter::<Watcher>::on_presence(vec![]), Ok(true)),
            "the probe"
        );
        assert_eq!(
            Adapter::<Watcher>::on_presence(vec![event]).map_err(|e| e.code),
            Err("RETRY".to_owned())
        );
        let occupied = W {
            change: PresenceChange::TopicOccupied,
            topic: "room:1".into(),
            user: None,
        };
        assert!(matches!(
            Adapter::<Watcher>::on_presence(vec![occupied]),
            Ok(true)
        ));
    }

    #[test]
    fn notifications_are_declined_unless_asked_for() {
        use wit_notify::Guest as _;
        assert!(!Adapter::<Default>::wants_notify());
        let payload = r#"{"topic":"t","event":"created","data":{"id":1}}"#;
        assert!(
            matches!(Adapter::<Default>::on_notify(payload.into()), Ok(None)),
            "the default publishes as is"
        );

        struct Mapper;
        impl Plugin for Mapper {
            fn router() -> Router {
                Router::new()
            }
            const NOTIFY_EVENTS: bool = true;
            fn on_notify(
                payload: &serde_json::Value,
            ) -> Result<Option<Vec<Publication>>, LiveError> {
                Ok(Some(vec![Publication::new(
                    "mapped",
                    "seen",
                    &payload["data"],
                )?]))
            }
        }
        assert!(Adapter::<Mapper>::wants_notify());
        let out = Adapter::<Mapper>::on_notify(payload.into())
            .unwrap()
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (
                out[0].topic.as_str(),
                out[0].event.as_str(),
                out[0].data.as_str()
            ),
            ("mapped", "seen", r#"{"id":1}"#)
        );
        let bad = Adapter::<Mapper>::on_notify("not json".into()).unwrap_err();
        assert_eq!(bad.code, "INVALID_REQUEST");
    }

    #[test]
    fn defaults_are_anonymous_and_fail_closed() {
        let req = wit::ConnectRequest {
            headers: vec![],
            cookies: vec![],
            query: vec![],
            remote_address: "1.2.3.4:5".into(),
            path: "/ws".into(),
        };
        assert!(matches!(Adapter::<Default>::authenticate(req), Ok(None)));
        let err =
            Adapter::<Default>::authorize_subscribe(wit_ctx(None), "room:x".into()).unwrap_err();
        assert_eq!(err.code, "FORBIDDEN");
    }

    #[test]
    fn call_passes_user_and_maps_errors() {
        let out = Adapter::<Default>::call(
            wit_ctx(Some(("ann", r#"{"r":1}"#))),
            "a/who".into(),
            "[]".into(),
        )
        .unwrap();
        assert_eq!(out, r#"{"id":"ann","attributes":{"r":1}}"#);
        let err = Adapter::<Default>::call(wit_ctx(None), "a/b".into(), "[1]".into()).unwrap_err();
        assert_eq!(err.code, "NOT_FOUND");
        let err =
            Adapter::<Default>::call(wit_ctx(None), "a/who".into(), "[1]".into()).unwrap_err();
        assert_eq!(err.code, "VALIDATION");
        assert_eq!(err.issues.map(|i| i.len()), Some(1));
    }

    #[test]
    fn user_conversion() {
        let u = user_to_wit(User::new("bob"));
        assert_eq!(u.attributes, "{}");
        let u = user_to_wit(User::new("bob").with_attributes(serde_json::Value::Null));
        assert_eq!(u.attributes, "{}");
        let back = user_from_wit(wit::User {
            id: "bob".into(),
            attributes: "not json".into(),
        });
        assert!(back.attributes.is_object());
    }
}
