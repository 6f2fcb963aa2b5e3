//! The cluster's flow-hash secret as a Kubernetes Secret: the controller
//! creates it once with random bytes, and the agent `DaemonSet` mounts it and
//! passes the file to `--hash-seed-file`, so every node hashes flows with the
//! same seed without anyone choosing one (see `lb_common::hash`).

use std::{collections::BTreeMap, io::Read as _, time::Duration};

use anyhow::{Context as _, Result};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

/// Name of the Secret, in the controller's (and agents') namespace.
pub const NAME: &str = "onehop-hash-seed";
/// Its key holding the secret bytes (the file name in the agent's mount).
pub const KEY: &str = "seed";
/// Bytes of a generated secret: a 32-bit seed is derived from them, and more
/// bytes cost nothing.
const LEN: usize = 32;

/// A new Secret holding `LEN` bytes from the kernel's random source.
fn generate() -> Result<Secret> {
    let mut bytes = vec![0u8; LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the hash seed")?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(NAME.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "onehop".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(bytes))])),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    })
}

/// Makes sure the Secret exists in `namespace`: an existing one is never
/// replaced (a new seed would move new flows on nodes that restart, while the
/// others kept the old one). Returns whether this call created it.
pub async fn ensure(client: Client, namespace: &str) -> Result<bool> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if api
        .get_opt(NAME)
        .await
        .with_context(|| format!("reading Secret {namespace}/{NAME}"))?
        .is_some()
    {
        return Ok(false);
    }
    match api.create(&PostParams::default(), &generate()?).await {
        Ok(_) => Ok(true),
        // The other replica was first: its secret is as good.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating Secret {namespace}/{NAME}")),
    }
}

/// [`ensure`] until it succeeds, waiting `retry` between attempts (the
/// agents cannot start without the Secret, so it is worth insisting).
pub async fn ensure_until_done(client: Client, namespace: String, retry: Duration) {
    loop {
        match ensure(client.clone(), &namespace).await {
            Ok(true) => {
                info!(secret = NAME, "created the cluster's flow-hash secret");
                return;
            }
            Ok(false) => return,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the flow-hash secret is not there yet; retrying");
            }
        }
        tokio::time::sleep(retry).await;
    }
}
