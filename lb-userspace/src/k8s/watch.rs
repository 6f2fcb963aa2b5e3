//! The one watch helper both programs use: a reflector cache of one kind
//! that pokes a shared `Notify` whenever it changes, so a level-triggered
//! loop re-reads every cache and reconciles once for a burst of events.

use std::{fmt::Debug, future::Future, sync::Arc};

use futures::{StreamExt as _, future};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

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
