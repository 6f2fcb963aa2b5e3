//! Kubernetes Events (`events.k8s.io/v1`) as kube-runtime's `Recorder` publishes them — one
//! Event per (type, action, reason, regarding, related) and reporter; a repeat within
//! [`SERIES_WINDOW`] patches that Event's `series` instead of creating another — with a
//! compact memory of what was published.
//!
//! kube-runtime's `Recorder` keeps every Event it published, whole, for six minutes, and
//! scans them all on each publish: an agent announcing 10,000 Services publishes 10,000
//! `nodeAssigned` Events at start, which it kept as ~35 MiB of `Event` objects in its hash
//! table (by `heaptrack`, `bench e2e`'s control-plane step) for a series that needs only
//! the Event's name and count.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};
use serde_json::json;

/// How long a published Event takes repeats into its series (kube-runtime's and client-go's
/// window).
pub const SERIES_WINDOW: Duration = Duration::from_mins(6);

/// What makes a repeat: kube-runtime's key without the reporter (one per recorder),
/// the references by API version, kind, namespace, name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    action: String,
    reason: String,
    regarding: [Option<String>; 5],
    related: Option<[Option<String>; 5]>,
}

fn identity(r: &ObjectReference) -> [Option<String>; 5] {
    [
        r.api_version.clone(),
        r.kind.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.uid.clone(),
    ]
}

/// A published Event: where it is and how many times it was seen.
#[derive(Debug)]
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// Publishes Events for one reporter; cheap to share behind a reference.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    by_key: HashMap<Key, Published>,
    swept: Option<Instant>,
}

impl Recent {
    /// Forgets Events past their window, at most once a window: each entry is a few hundred
    /// bytes, and a scan on every publish would make a burst of n Events cost n².
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < SERIES_WINDOW)
        {
            return;
        }
        self.swept = Some(now);
        self.by_key
            .retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
        self.by_key.shrink_to_fit();
    }

    /// The Event a repeat of `key` at `now` extends (its namespace, name and new count).
    fn repeat(&mut self, key: &Key, now: Instant) -> Option<(String, String, i32)> {
        let p = self.by_key.get_mut(key)?;
        if now.duration_since(p.last) >= SERIES_WINDOW {
            return None;
        }
        Some((p.namespace.clone(), p.name.clone(), p.count + 1))
    }
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recent: Mutex::new(Recent::default()),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `ev` about `regarding`: creates an Event, or patches the `series` of the
    /// one published for the same key within [`SERIES_WINDOW`]. Cluster-scoped objects'
    /// Events go to `default`, as kube-runtime's.
    ///
    /// # Errors
    /// The API server's refusal of the create or patch.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Key {
            warning: ev.type_ == EventType::Warning,
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            regarding: identity(regarding),
            related: ev.secondary.as_ref().map(identity),
        };
        let now = Instant::now();
        let repeat = {
            let mut recent = self.recent();
            recent.sweep(now);
            recent.repeat(&key, now)
        };
        let stamp = Timestamp::now();
        let (namespace, name, count) = if let Some((namespace, name, count)) = repeat {
            let series =
                json!({ "series": { "count": count, "lastObservedTime": MicroTime(stamp) } });
            Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await?;
            (namespace, name, count)
        } else {
            let event = self.event(ev, regarding, stamp);
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let created = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                .create(&PostParams::default(), &event)
                .await?;
            (namespace, created.metadata.name.unwrap_or_default(), 1)
        };
        self.recent().by_key.insert(
            key,
            Published {
                namespace,
                name,
                count,
                last: now,
            },
        );
        Ok(())
    }

    /// A new Event, named and filled in as kube-runtime names and fills its own.
    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(match ev.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            related: ev.secondary.clone(),
            ..K8sEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::Resource as _;
    use onehop_apiserver::{ApiServer, Verb};

    use super::*;

    fn service(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("web".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn note(reason: &str, text: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(text.into()),
            action: "Announce".into(),
            secondary: None,
        }
    }

    #[tokio::test]
    async fn repeats_become_a_series_others_new_events() {
        let server = ApiServer::start_local().expect("server");
        let client = server.client().expect("client");
        let store = server.store();
        let a = store.put(&service("a")).expect("a").object_ref(&());
        let b = store.put(&service("b")).expect("b").object_ref(&());
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "onehop-agent".into(),
                instance: Some("node1".into()),
            },
        );
        for _ in 0..3 {
            // The note is not part of the key (as kube-runtime's): the first one stays.
            recorder
                .publish(&note("nodeAssigned", "first"), &a)
                .await
                .expect("published");
        }
        recorder
            .publish(&note("nodeAssigned", "first"), &b)
            .await
            .expect("published");
        recorder
            .publish(&note("other", "x"), &a)
            .await
            .expect("published");
        let events: Vec<K8sEvent> = store.list().expect("events");
        let mut seen: Vec<(String, String, Option<i32>, String, String)> = events
            .iter()
            .map(|e| {
                (
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.series.as_ref().map(|s| s.count),
                    e.note.clone().unwrap_or_default(),
                    e.reporting_instance.clone().unwrap_or_default(),
                )
            })
            .collect();
        seen.sort();
        let row = |n: &str, r: &str, c: Option<i32>, t: &str| {
            (
                n.to_owned(),
                r.to_owned(),
                c,
                t.to_owned(),
                "node1".to_owned(),
            )
        };
        assert_eq!(
            seen,
            [
                row("a", "nodeAssigned", Some(3), "first"),
                row("a", "other", None, "x"),
                row("b", "nodeAssigned", None, "first"),
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.metadata.namespace.as_deref() == Some("web"))
        );
        assert_eq!(
            server.request_count(Verb::Create, "events.events.k8s.io"),
            3
        );
        assert_eq!(server.request_count(Verb::Patch, "events.events.k8s.io"), 2);
    }

    #[test]
    fn the_window_ends_a_series_and_sweeps_forget_old_events() {
        let key = |reason: &str| Key {
            warning: false,
            action: "Announce".into(),
            reason: reason.into(),
            regarding: [None, None, None, Some("a".into()), None],
            related: None,
        };
        let t0 = Instant::now();
        let mut recent = Recent::default();
        for (reason, at) in [("old", t0), ("new", t0 + SERIES_WINDOW / 2)] {
            recent.by_key.insert(
                key(reason),
                Published {
                    namespace: "web".into(),
                    name: format!("a.{reason}"),
                    count: 1,
                    last: at,
                },
            );
        }
        let later = t0 + SERIES_WINDOW;
        assert_eq!(recent.repeat(&key("old"), later), None, "past its window");
        assert_eq!(
            recent.repeat(&key("new"), later),
            Some(("web".into(), "a.new".into(), 2))
        );
        recent.sweep(later);
        assert_eq!(recent.by_key.len(), 1);
        assert!(recent.by_key.contains_key(&key("new")));
    }
}
