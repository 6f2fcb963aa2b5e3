//! The one watch helper both programs use: a reflector cache of one kind
//! that pokes a shared `Notify` whenever it changes, so a level-triggered
//! loop re-reads every cache and reconciles once for a burst of events.
//! [`spawn_read`] caches a compact value read from each object instead of the
//! object (the agent's `EndpointSlice`s: the bulk of what it watches).

use std::{
    collections::BTreeMap,
    fmt::Debug,
    future::Future,
    sync::{Arc, PoisonError, RwLock},
};

use futures::{StreamExt as _, future};
use kube::{
    Api, Resource, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

/// Objects per page of every watch's LIST (the first and every re-list). A page is decoded
/// whole (the response text, then its objects) before a cache keeps what it reads of them,
/// so the page, not the cluster, sets that transient: 10,000 `EndpointSlice`s of 10
/// endpoints in one response are ~56 MiB of decoded objects in the agent, 500 of them ~3
/// MiB. kube-runtime's default is the same 500 (client-go's); it is set here so that it
/// stays what the memory figures were measured with. Each page is one round trip (a few ms
/// on a LAN): 20 for 10,000 objects.
pub const LIST_PAGE_SIZE: u32 = 500;

/// The watcher configuration every watch starts from: lists as consistent reads (kube's
/// default), [`LIST_PAGE_SIZE`] objects a page.
pub fn config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// A cache of `api`'s objects selected by `config`, and the future that
/// keeps it filled (run it, or spawn it). Watch errors are retried with
/// kube's default backoff; the cache keeps the last state meanwhile.
/// `managedFields` are dropped before caching: nothing reads them, and on a real
/// cluster they are often the largest part of an object.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: &Arc<Notify>,
) -> (Store<K>, impl Future<Output = ()> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflect_trimmed(api, config, notify, |_| {})
}

/// [`reflect`], with `trim` applied to every object before it is cached: a program that
/// watches thousands of objects keeps only the fields it reads.
pub fn reflect_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: &Arc<Notify>,
    trim: fn(&mut K),
) -> (Store<K>, impl Future<Output = ()> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let notify = Arc::clone(notify);
    let kind = K::kind(&()).into_owned();
    let fut = watcher(api, config)
        .default_backoff()
        .modify(move |obj| {
            obj.meta_mut().managed_fields = None;
            trim(obj);
        })
        .reflect(writer)
        .for_each(move |ev| {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(
                    error = %e, %kind,
                    "watch failed; keeping the last state and retrying"
                ),
            }
            future::ready(())
        });
    (reader, fut)
}

/// [`reflect_trimmed`], with the filling future spawned on the runtime.
pub fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: &Arc<Notify>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, fut) = reflect_trimmed(api, config, notify, trim);
    tokio::spawn(fut);
    store
}

/// An object's key in a [`Cache`]: (namespace, name).
type Key = (String, String);

/// What a [`Cache`] holds, and how watch events change it (as kube's reflector does: a
/// re-list is gathered apart and replaces the contents when complete, so objects deleted
/// while the watch was down go, and readers never see a half-listed cache).
#[derive(Debug)]
pub struct Contents<T> {
    live: BTreeMap<Key, Arc<T>>,
    /// The objects of a list in progress.
    listing: Option<BTreeMap<Key, Arc<T>>>,
}

impl<T> Default for Contents<T> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            listing: None,
        }
    }
}

impl<T> Contents<T> {
    /// Applies one watch event, keeping `read(object)` for each object (an object `read`
    /// gives nothing for is not kept, and an earlier value under its key goes). True when
    /// a list completed.
    pub fn apply<K: Resource>(
        &mut self,
        event: &watcher::Event<K>,
        read: impl Fn(&K) -> Option<T>,
    ) -> bool {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        let put = |map: &mut BTreeMap<Key, Arc<T>>, o: &K| match read(o) {
            Some(v) => {
                map.insert(key(o), Arc::new(v));
            }
            None => {
                map.remove(&key(o));
            }
        };
        match event {
            watcher::Event::Apply(o) => put(&mut self.live, o),
            watcher::Event::Delete(o) => {
                self.live.remove(&key(o));
            }
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => put(self.listing.get_or_insert_default(), o),
            watcher::Event::InitDone => {
                self.live = self.listing.take().unwrap_or_default();
                return true;
            }
        }
        false
    }

    /// Every value, by (namespace, name).
    pub fn values(&self) -> Vec<Arc<T>> {
        self.live.values().cloned().collect()
    }
}

/// A cache of compact values read from the objects of one kind ([`spawn_read`]).
#[derive(Debug)]
pub struct Cache<T> {
    contents: Arc<RwLock<Contents<T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Cache<T> {
    /// The values now, ordered by the objects' (namespace, name).
    pub fn state(&self) -> Vec<Arc<T>> {
        self.contents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
    }

    /// Waits for the first complete list; an error when the watch stopped before it.
    pub async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        self.ready.clone().wait_for(|r| *r).await.map(|_| ())
    }
}

/// [`spawn`], caching `read(object)` instead of the object: a program that watches
/// tens of thousands of objects and reads a few fields of each keeps only those.
pub fn spawn_read<K, T>(
    api: Api<K>,
    config: watcher::Config,
    notify: &Arc<Notify>,
    read: fn(&K) -> Option<T>,
) -> Cache<T>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + Sync + 'static,
{
    let contents = Arc::new(RwLock::new(Contents::default()));
    let (ready_tx, ready) = watch::channel(false);
    let notify = Arc::clone(notify);
    let kind = K::kind(&()).into_owned();
    let writer = Arc::clone(&contents);
    let fut = watcher(api, config).default_backoff().for_each(move |ev| {
        match ev {
            Ok(ev) => {
                let listed = writer
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply(&ev, read);
                if listed {
                    ready_tx.send_replace(true);
                }
                notify.notify_one();
            }
            Err(e) => tracing::warn!(
                error = %e, %kind,
                "watch failed; keeping the last state and retrying"
            ),
        }
        future::ready(())
    });
    tokio::spawn(fut);
    Cache { contents, ready }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(name: &str, data: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: data.map(|d| [("k".to_owned(), d.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    /// Keeps the value of `k`; objects without one are not kept.
    fn read(o: &ConfigMap) -> Option<String> {
        o.data.as_ref()?.get("k").cloned()
    }

    fn values(c: &Contents<String>) -> Vec<String> {
        c.values().iter().map(|v| (**v).clone()).collect()
    }

    #[test]
    fn a_relist_replaces_the_contents_only_once_complete() {
        let mut c = Contents::default();
        assert!(!c.apply(&watcher::Event::Init, read));
        assert!(!c.apply(&watcher::Event::InitApply(object("b", Some("2"))), read));
        assert!(!c.apply(&watcher::Event::InitApply(object("a", Some("1"))), read));
        assert!(values(&c).is_empty(), "a list in progress is not visible");
        assert!(c.apply(&watcher::Event::<ConfigMap>::InitDone, read));
        assert_eq!(values(&c), ["1", "2"], "ordered by (namespace, name)");
        c.apply(&watcher::Event::Apply(object("c", Some("3"))), read);
        c.apply(&watcher::Event::Delete(object("a", None)), read);
        assert_eq!(values(&c), ["2", "3"]);
        // A change that makes the object unreadable drops what was kept of it.
        c.apply(&watcher::Event::Apply(object("b", None)), read);
        assert_eq!(values(&c), ["3"]);
        // The watch restarts: the old contents stay until the new list is complete, and
        // what the new list lacks is gone.
        c.apply(&watcher::Event::Init, read);
        c.apply(&watcher::Event::InitApply(object("d", Some("4"))), read);
        assert_eq!(values(&c), ["3"]);
        assert!(c.apply(&watcher::Event::<ConfigMap>::InitDone, read));
        assert_eq!(values(&c), ["4"]);
    }
}
