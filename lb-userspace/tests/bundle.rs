//! The install bundle (`deploy/onehop.yaml`) and the kustomization beside it are
//! what `cargo xtask bundle` makes of `manifests/` now, hold every manifest, and
//! name the one image; `kubectl kustomize` renders the same objects and its
//! `images:` setting moves every onehop container to another image. (Each
//! manifest itself is checked against the API types in `manifests.rs`.)

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lb_userspace::k8s::bundle::{self, IMAGE_NAME, MANIFESTS, NOT_BUNDLED};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The non-empty documents of a YAML stream.
fn parse(what: &str, text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn bundle_docs() -> Vec<Value> {
    parse(bundle::BUNDLE_PATH, &read(bundle::BUNDLE_PATH))
}

#[test]
fn bundle_and_kustomization_are_up_to_date() {
    let generated = bundle::bundle(&root().join("manifests")).expect("generate the bundle");
    assert!(
        read(bundle::BUNDLE_PATH) == generated,
        "{} is stale: run `cargo xtask bundle`",
        bundle::BUNDLE_PATH
    );
    assert!(
        read(bundle::KUSTOMIZATION_PATH) == bundle::kustomization(),
        "{} is stale: run `cargo xtask bundle`",
        bundle::KUSTOMIZATION_PATH
    );
}

/// A manifest added to `manifests/` must be placed in the apply order (or the
/// bundle would silently install without it).
#[test]
fn every_manifest_is_in_the_bundle() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("manifests"))
        .expect("manifests/")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = MANIFESTS
        .iter()
        .chain(&NOT_BUNDLED)
        .map(|&f| f.to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "manifests/*.yaml and bundle::MANIFESTS + NOT_BUNDLED differ"
    );
}

/// Every document of the bundle parses, and they are the manifests' documents,
/// in the apply order: definitions and the namespace first, the programs last.
#[test]
fn bundle_documents_are_the_manifests_in_apply_order() {
    let docs = bundle_docs();
    let mut expected = Vec::new();
    for file in MANIFESTS {
        expected.extend(parse(file, &read(&format!("manifests/{file}"))));
    }
    assert_eq!(docs.len(), expected.len());
    for (i, (d, e)) in docs.iter().zip(&expected).enumerate() {
        assert!(
            d == e,
            "document {i} ({} {}) differs",
            e["kind"],
            e["metadata"]["name"]
        );
        for field in ["apiVersion", "kind"] {
            assert!(d[field].is_string(), "document {i} has no {field}: {d}");
        }
        assert!(
            d["metadata"]["name"].is_string(),
            "document {i} has no name"
        );
    }
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    let first = |kind: &str| kinds.iter().position(|k| *k == kind);
    let last = |kind: &str| kinds.iter().rposition(|k| *k == kind);
    let before = |a: &str, b: &str| {
        assert!(
            last(a).expect(a) < first(b).expect(b),
            "every {a} must come before the first {b}: {kinds:?}"
        );
    };
    before("CustomResourceDefinition", "Namespace");
    before("Namespace", "ServiceAccount");
    before("ClusterRoleBinding", "Deployment");
    before("RoleBinding", "DaemonSet");
}

/// Every container image (containers and init containers, at any depth).
fn images(doc: &Value, out: &mut Vec<(String, Value)>) {
    match doc {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "containers" || key == "initContainers" {
                    for c in v.as_array().into_iter().flatten() {
                        out.push((
                            c["image"].as_str().unwrap_or_default().to_owned(),
                            c["imagePullPolicy"].clone(),
                        ));
                    }
                } else {
                    images(v, out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                images(v, out);
            }
        }
        _ => {}
    }
}

fn all_images(docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for d in docs {
        images(d, &mut out);
    }
    out
}

/// One image, named locally: built by `cargo xtask image`, imported into each node,
/// never pulled (`IfNotPresent`, and a `localhost/` name no registry serves).
#[test]
fn the_bundle_names_one_local_image_never_pulled() {
    let found = all_images(&bundle_docs());
    assert!(found.len() >= 2, "the agent and the controller: {found:?}");
    for (image, policy) in &found {
        assert_eq!(image, &bundle::image());
        assert_eq!(policy, "IfNotPresent", "{image}");
    }
    assert!(bundle::image().starts_with(&format!("{IMAGE_NAME}:")));
    // The manifests applied on their own run the same image.
    for file in NOT_BUNDLED {
        let path = format!("manifests/{file}");
        let found = all_images(&parse(&path, &read(&path)));
        assert!(!found.is_empty(), "{file} runs no container");
        for (image, policy) in &found {
            assert_eq!(image, &bundle::image(), "{file}");
            assert_eq!(policy, "IfNotPresent", "{file}: {image}");
        }
    }
}

/// `kubectl kustomize DIR`, or `None` (with a note) when kubectl is not installed.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: kubectl is not installed");
            return None;
        }
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse(
        "kubectl kustomize output",
        &String::from_utf8_lossy(&out.stdout),
    ))
}

fn sorted(mut docs: Vec<Value>) -> Vec<Value> {
    let key = |d: &Value| {
        format!(
            "{}/{}/{}/{}",
            d["apiVersion"], d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]
        )
    };
    docs.sort_by_key(key);
    docs
}

/// `kubectl apply -k .` installs exactly what `kubectl apply -f deploy/onehop.yaml`
/// does (kustomize orders by kind itself).
#[test]
fn kustomize_renders_the_bundle() {
    let Some(rendered) = kustomize(&root()) else {
        return;
    };
    let (rendered, bundle) = (sorted(rendered), sorted(bundle_docs()));
    assert_eq!(rendered.len(), bundle.len());
    for (r, b) in rendered.iter().zip(&bundle) {
        assert!(
            r == b,
            "kustomize renders {} {} otherwise",
            b["kind"],
            b["metadata"]["name"]
        );
    }
}

/// The kustomization's `images:` entry is the one image setting: changed, it moves
/// every onehop container to the new image.
#[test]
fn the_kustomization_image_setting_changes_every_onehop_image() {
    let dir = std::env::temp_dir().join(format!("onehop-kustomize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).expect("temp dir");
    for file in MANIFESTS {
        std::fs::copy(
            root().join("manifests").join(file),
            dir.join("manifests").join(file),
        )
        .expect("copy a manifest");
    }
    let original = read(bundle::KUSTOMIZATION_PATH);
    let edited = original
        .replace(
            &format!("newName: {IMAGE_NAME}"),
            "newName: registry.example:5000/team/onehop",
        )
        .replace(
            &format!("newTag: \"{}\"", env!("CARGO_PKG_VERSION")),
            "newTag: \"9.9.9-test\"",
        );
    assert_ne!(edited, original, "the image setting was not found");
    std::fs::write(dir.join(bundle::KUSTOMIZATION_PATH), edited).expect("write");
    let rendered = kustomize(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let Some(rendered) = rendered else {
        return;
    };
    let found = all_images(&rendered);
    assert_eq!(found.len(), all_images(&bundle_docs()).len());
    for (image, _) in &found {
        assert_eq!(image, "registry.example:5000/team/onehop:9.9.9-test");
    }
}
