//! The one way both programs build their Kubernetes client.

use anyhow::{Context as _, Result};

/// A client for the in-cluster configuration or KUBECONFIG, or, with
/// `api_server`, for a plain-HTTP API server (the test server).
pub async fn client(api_server: Option<&str>) -> Result<kube::Client> {
    let config = match api_server {
        Some(url) => kube::Config::new(url.parse().context("--api-server is not a URL")?),
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
