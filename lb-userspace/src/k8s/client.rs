//! The one way both programs build their Kubernetes client.

use anyhow::{Context as _, Result};

/// A client for the in-cluster configuration or KUBECONFIG, or, with
/// `api_server`, for a plain-HTTP API server (the test server).
pub async fn client(api_server: Option<&str>) -> Result<kube::Client> {
    from_config(config(api_server).await?)
}

/// The configuration [`client`] uses: for a program that needs more than one
/// client (each is bound to the runtime it was built on).
pub async fn config(api_server: Option<&str>) -> Result<kube::Config> {
    match api_server {
        Some(url) => Ok(kube::Config::new(
            url.parse().context("--api-server is not a URL")?,
        )),
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster or KUBECONFIG)"),
    }
}

/// A client for `config`, bound to the current runtime.
pub fn from_config(config: kube::Config) -> Result<kube::Client> {
    kube::Client::try_from(config).context("building the Kubernetes client")
}
