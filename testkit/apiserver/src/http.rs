//! The REST + watch wire protocol: URL routing, verbs, query parameters, response bodies.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Inner, RequestRecord, Verb, events, openapi,
    patch::PatchKind,
    selector::{FieldSelector, LabelSelector},
    store::{
        Admission, ApiError, CrdVersion, Deleted, EventType, FieldValidation, HistEvent,
        ResourceDef, State, Sub,
    },
    table,
};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn method_not_allowed(m: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({m})"),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters (last value wins).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// A request for a resource, after routing.
#[derive(Debug)]
struct Target {
    rd: ResourceDef,
    /// The URL's namespace (`None`: cluster-scoped, or a cluster-wide collection).
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn ns(&self) -> &str {
        self.ns.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn write_sub(&self) -> Sub {
        if self.sub.is_some() {
            Sub::Status
        } else {
            Sub::Main
        }
    }

    /// `plural[.group][/sub]`, the key of request counters.
    fn counter_key(&self) -> String {
        let mut k = super::resource_name(&self.rd);
        if let Some(s) = &self.sub {
            k.push('/');
            k.push_str(s);
        }
        k
    }
}

enum Route {
    Version,
    OpenApiIndex,
    OpenApiDocument(String),
    /// kubectl asks for v2 only as protobuf, which this server does not speak.
    OpenApiV2,
    CoreVersions,
    Groups,
    ResourceList(String, String),
    Resource(Target),
}

fn route(state: &State, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["openapi", "v3"] => return Ok(Route::OpenApiIndex),
        ["openapi", "v3", rest @ ..] => return Ok(Route::OpenApiDocument(rest.join("/"))),
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", v] => return Ok(Route::ResourceList(String::new(), (*v).to_owned())),
        ["apis", g, v] => return Ok(Route::ResourceList((*g).to_owned(), (*v).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let namespaced = |res: &str| {
        state
            .resolve(group, version, res)
            .filter(|rd| rd.namespaced)
            .cloned()
    };
    let (rd, ns, tail) = match rest {
        ["namespaces", ns, res, tail @ ..] if namespaced(res).is_some() => (
            namespaced(res).ok_or_else(not_found_path)?,
            Some((*ns).to_owned()),
            tail,
        ),
        [res, tail @ ..] => {
            let rd = state
                .resolve(group, version, res)
                .cloned()
                .ok_or_else(not_found_path)?;
            // A namespaced resource without a namespace is only a cluster-wide collection.
            if rd.namespaced && !tail.is_empty() {
                return Err(not_found_path());
            }
            (rd, None, tail)
        }
        [] => return Err(not_found_path()),
    };
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, "status"] if rd.status => (Some((*name).to_owned()), Some("status".to_owned())),
        _ => return Err(not_found_path()),
    };
    Ok(Route::Resource(Target { rd, ns, name, sub }))
}

/// Short names and categories of the built-in resources, as Kubernetes has them.
fn builtin_names(rd: &ResourceDef) -> (&'static [&'static str], &'static [&'static str]) {
    match (rd.group.as_str(), rd.plural.as_str()) {
        ("", "namespaces") => (&["ns"], &[]),
        ("", "nodes") => (&["no"], &[]),
        ("", "services") => (&["svc"], &["all"]),
        ("", "endpoints") => (&["ep"], &[]),
        ("", "pods") => (&["po"], &["all"]),
        ("", "configmaps") => (&["cm"], &[]),
        ("", "serviceaccounts") => (&["sa"], &[]),
        ("" | "events.k8s.io", "events") => (&["ev"], &[]),
        ("apps", "deployments") => (&["deploy"], &["all"]),
        ("apps", "daemonsets") => (&["ds"], &["all"]),
        ("apiextensions.k8s.io", "customresourcedefinitions") => (&["crd", "crds"], &[]),
        _ => (&[], &[]),
    }
}

fn discovery(state: &State, route: &Route) -> Value {
    match route {
        Route::OpenApiIndex => openapi::index(state),
        Route::Version => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-onehop-testkit",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "none", "compiler": "none", "platform": "linux/amd64",
        }),
        Route::CoreVersions => json!({"kind": "APIVersions", "versions": ["v1"]}),
        Route::Groups => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for rd in state.resources().filter(|r| !r.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == rd.group) {
                    Some((_, vs)) if !vs.contains(&rd.version) => vs.push(rd.version.clone()),
                    Some(_) => {}
                    None => groups.push((rd.group.clone(), vec![rd.version.clone()])),
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        Route::ResourceList(g, v) => {
            let mut resources = Vec::new();
            for rd in state
                .resources()
                .filter(|r| r.group == *g && r.version == *v)
            {
                let verbs = [
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ];
                let mut entry = json!({"name": rd.plural, "singularName": rd.kind.to_lowercase(),
                    "namespaced": rd.namespaced, "kind": rd.kind, "verbs": verbs});
                let (short, categories): (Vec<String>, Vec<String>) =
                    if let Some(crd) = state.crd(rd) {
                        entry["singularName"] = crd.singular.clone().into();
                        (crd.short_names.clone(), crd.categories.clone())
                    } else {
                        let (short, categories) = builtin_names(rd);
                        (
                            short.iter().map(|x| (*x).to_owned()).collect(),
                            categories.iter().map(|x| (*x).to_owned()).collect(),
                        )
                    };
                if !short.is_empty() {
                    entry["shortNames"] = short.into();
                }
                if !categories.is_empty() {
                    entry["categories"] = categories.into();
                }
                resources.push(entry);
                if rd.status {
                    resources.push(json!({"name": format!("{}/status", rd.plural),
                        "singularName": "", "namespaced": rd.namespaced, "kind": rd.kind,
                        "verbs": ["get", "patch", "update"]}));
                }
            }
            let gv = if g.is_empty() {
                v.clone()
            } else {
                format!("{g}/{v}")
            };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                   "resources": resources})
        }
        Route::Resource(_) | Route::OpenApiDocument(_) | Route::OpenApiV2 => Value::Null,
    }
}

/// Serves one HTTP request.
pub(crate) async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading the body: {e}")));
        }
    };
    let query = Query::parse(parts.uri.query());
    let route = {
        let state = inner.lock_state();
        match route(&state, parts.uri.path()) {
            Ok(Route::Resource(t)) => Route::Resource(t),
            Ok(Route::OpenApiDocument(p)) => {
                return match openapi::document(&state, &p) {
                    Some(doc) => json_response(200, &doc),
                    None => error_response(&not_found_path()),
                };
            }
            Ok(Route::OpenApiV2) => return error_response(&not_found_path()),
            Ok(other) => return json_response(200, &discovery(&state, &other)),
            Err(e) => return error_response(&e),
        }
    };
    let Route::Resource(target) = route else {
        unreachable!("other routes answered above")
    };
    let verb = match (&parts.method, target.name.is_some()) {
        (&Method::GET, _) if query.flag("watch") => Verb::Watch,
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) if target.ns.is_some() || !target.rd.namespaced => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        (m, _) => return error_response(&method_not_allowed(m)),
    };
    if verb.is_write() {
        let latency = inner.write_latency(&target.counter_key());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
    let response = if verb == Verb::Watch {
        watch(&inner, &target, &query, &parts.headers)
    } else {
        serve(&inner, verb, &target, &query, &parts.headers, &body)
    };
    let response = response.unwrap_or_else(|e| error_response(&e));
    inner.record(RequestRecord {
        at: Instant::now(),
        verb,
        resource: target.counter_key(),
        namespace: target.ns.clone(),
        name: target.name.clone(),
        code: response.status().as_u16(),
    });
    response
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
        FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
    ))
}

fn parse_rv(s: Option<&str>) -> Result<Option<u64>, ApiError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

/// `limit`: none, or 0, lists everything.
fn parse_limit(s: Option<&str>) -> Result<Option<usize>, ApiError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n <= 0 => Ok(None),
            Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            Err(_) => Err(ApiError::bad_request(format!("invalid limit {s:?}"))),
        },
    }
}

const CONTINUE_VERSION: &str = "meta.k8s.io/v1";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A paged list's `continue` token: the resourceVersion every page reads and the key the
/// next page starts after, as kube-apiserver's (opaque to clients; hex here, URL-safe).
fn continue_token(rv: u64, last: &(String, String)) -> String {
    let json = json!({"v": CONTINUE_VERSION, "rv": rv, "start": [last.0, last.1]}).to_string();
    let mut hex = String::with_capacity(2 * json.len());
    for b in json.bytes() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

fn parse_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| invalid("not hex"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(&e.to_string()))?;
    if v["v"] != CONTINUE_VERSION {
        return Err(invalid("unknown version"));
    }
    let rv = v["rv"]
        .as_u64()
        .ok_or_else(|| invalid("no resourceVersion"))?;
    match (v["start"][0].as_str(), v["start"][1].as_str()) {
        (Some(ns), Some(name)) => Ok((rv, (ns.to_owned(), name.to_owned()))),
        _ => Err(invalid("no start key")),
    }
}

/// Where a LIST reads: the resourceVersion and the key it starts after. A first page reads
/// the current state, or the exact version asked for (`resourceVersionMatch=Exact`); a
/// continued one the first page's version from the token's key on.
fn list_position(
    state: &State,
    t: &Target,
    query: &Query,
) -> Result<(u64, Option<(String, String)>), ApiError> {
    let rv = parse_rv(query.get("resourceVersion"))?;
    let Some(token) = query.get("continue").filter(|c| !c.is_empty()) else {
        return Ok(match (rv, query.get("resourceVersionMatch")) {
            (Some(rv), Some("Exact")) => (rv, None),
            _ => (state.rv, None),
        });
    };
    // What kube-apiserver refuses with a continue token, as it does.
    if rv.is_some_and(|rv| rv != 0) {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if query
        .get("resourceVersionMatch")
        .is_some_and(|m| !m.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    let (at, last) = parse_continue(token)?;
    if t.rd.namespaced && t.ns.as_deref().is_some_and(|ns| ns != last.0) {
        return Err(ApiError::bad_request(
            "invalid continue token: it continues a list of another namespace",
        ));
    }
    Ok((at, Some(last)))
}

/// Typed `kubectl create <kind>` commands send protobuf; this server has no schemas to
/// decode it with.
fn refuse_protobuf(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the test API server accepts JSON only: protobuf bodies are not supported",
        ));
    }
    Ok(())
}

fn serve(
    inner: &Inner,
    verb: Verb,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    if query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    refuse_protobuf(headers)?;
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
    };
    let rd = &t.rd;
    let mut adm = Admission::api(FieldValidation::parse(query.get("fieldValidation"))?);
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wants_table);
    // `list_meta`: the list's resourceVersion, continue token and remaining item count.
    let respond = |state: &State, objects: Vec<Value>, list_meta: Option<Value>| {
        let rv = state.rv.to_string();
        if as_table {
            let mut t = table::table(rd, state.crd(rd), &objects, query.get("includeObject"), &rv);
            if let Some(meta) = list_meta {
                t["metadata"] = meta;
            }
            return json_response(200, &t);
        }
        let Some(meta) = list_meta else {
            return json_response(200, &objects[0]);
        };
        json_response(
            200,
            &json!({
                "kind": format!("{}List", rd.kind),
                "apiVersion": rd.api_version(),
                "metadata": meta,
                "items": objects,
            }),
        )
    };
    let response: Result<Response<Body>, ApiError> = inner.with_state(|state| match verb {
        Verb::Get => {
            let o = state
                .get(rd, t.ns(), t.name())
                .or_else(|e| other_event_view(state, rd, t.ns(), t.name()).ok_or(e))?;
            Ok(respond(state, vec![o], None))
        }
        Verb::List => {
            let (items, meta) = list(state, t, query)?;
            Ok(respond(state, items, Some(meta)))
        }
        Verb::Create => state
            .create(rd, t.ns(), parse_body()?, false, &mut adm)
            .map(|o| json_response(201, &o)),
        Verb::Update => state
            .update(rd, t.ns(), t.name(), parse_body()?, t.write_sub(), &mut adm)
            .map(|o| json_response(200, &o)),
        Verb::Patch => patch(state, t, query, headers, body, &mut adm),
        Verb::Delete => {
            let opts = if body.is_empty() {
                None
            } else {
                Some(parse_body()?)
            };
            match state.delete(rd, t.ns(), t.name(), opts.as_ref())? {
                Deleted::Pending(o) => Ok(json_response(200, &o)),
                Deleted::Gone(o) => Ok(json_response(
                    200,
                    &json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success",
                        "details": {"name": t.name(), "group": rd.group, "kind": rd.plural,
                                    "uid": o["metadata"]["uid"]},
                    }),
                )),
            }
        }
        Verb::DeleteCollection => delete_collection(state, t, query),
        Verb::Watch => Err(method_not_allowed(&Method::GET)),
    });
    let mut response = response?;
    for w in &adm.warnings {
        // RFC 7234 warn-code 299 ("miscellaneous persistent warning"), as Kubernetes sends.
        let text = format!("299 - {}", Value::from(w.as_str()));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

/// A LIST: its items and its list metadata (resourceVersion; continue token and remaining
/// item count when paged).
fn list(state: &State, t: &Target, query: &Query) -> Result<(Vec<Value>, Value), ApiError> {
    let rd = &t.rd;
    let (labels, fields) = selectors(query)?;
    let keep = |o: &Value| labels.matches(o) && fields.matches(o);
    if events::is_core(rd) || events::is_events_api(rd) {
        // Each Event API lists the other's Events too, from another key range:
        // these lists come whole, as a server that ignores `limit` answers.
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            return Err(ApiError::bad_request(
                "invalid continue token: lists of Events are never paged here",
            ));
        }
        let mut items: Vec<Value> = state.list(rd, t.ns.as_deref()).cloned().collect();
        items.extend(other_event_views(state, rd, t.ns.as_deref()));
        items.retain(keep);
        let meta = json!({"resourceVersion": state.rv.to_string()});
        return Ok((items, meta));
    }
    let (at, after) = list_position(state, t, query)?;
    let limit = parse_limit(query.get("limit"))?;
    let page = state
        .list_at(rd, t.ns.as_deref(), at, after.as_ref(), limit, keep)
        .map_err(|e| {
            if after.is_some() {
                ApiError::expired(
                    "The provided continue parameter is too old to display a \
                     consistent list result. You can start a new list without the \
                     continue parameter.",
                )
            } else {
                e
            }
        })?;
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(last) = page.last.as_ref().filter(|_| page.remaining > 0) {
        meta["continue"] = continue_token(page.rv, last).into();
        // As kube-apiserver: the count is known only for an unfiltered list.
        if labels.is_empty() && fields.is_empty() {
            meta["remainingItemCount"] = page.remaining.into();
        }
    }
    Ok((page.items, meta))
}

/// The Events of the other Event API, as `rd` (one of them) shows them.
fn other_event_views(state: &State, rd: &ResourceDef, ns: Option<&str>) -> Vec<Value> {
    let (other, convert): (_, fn(&Value) -> Value) = if events::is_core(rd) {
        (
            state.resolve("events.k8s.io", "v1", "events"),
            events::to_core,
        )
    } else if events::is_events_api(rd) {
        (state.resolve("", "v1", "events"), events::to_events_api)
    } else {
        return Vec::new();
    };
    let Some(other) = other.cloned() else {
        return Vec::new();
    };
    state.list(&other, ns).map(convert).collect()
}

/// One Event of the other Event API by name, as `rd` shows it.
fn other_event_view(state: &State, rd: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
    other_event_views(state, rd, Some(ns))
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
}

fn patch(
    state: &mut State,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    adm: &mut Admission,
) -> Result<Response<Body>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {ct:?}"),
        )
    })?;
    let existed = state.get(&t.rd, t.ns(), t.name()).is_ok();
    let o = state.patch(
        &t.rd,
        t.ns(),
        t.name(),
        kind,
        body,
        t.write_sub(),
        query.get("fieldManager"),
        adm,
    )?;
    // Server-side apply may create.
    Ok(json_response(if existed { 200 } else { 201 }, &o))
}

fn delete_collection(
    state: &mut State,
    t: &Target,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let rd = &t.rd;
    let (labels, fields) = selectors(query)?;
    let names: Vec<(String, String)> = state
        .list(rd, t.ns.as_deref())
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| {
            let m = &o["metadata"];
            (
                m["namespace"].as_str().unwrap_or_default().to_owned(),
                m["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut items = Vec::new();
    for (ns, name) in names {
        match state.delete(rd, &ns, &name, None)? {
            Deleted::Gone(o) | Deleted::Pending(o) => items.push(o),
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", rd.kind), "apiVersion": rd.api_version(),
            "metadata": {"resourceVersion": state.rv.to_string()}, "items": items,
        }),
    ))
}

/// What one watch stream sends and how far it got.
struct WatchStream {
    inner: Arc<Inner>,
    rd: ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Every change up to this resourceVersion has been considered.
    cursor: u64,
    queue: VecDeque<Bytes>,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    next_bookmark: tokio::time::Instant,
    rv_rx: watch::Receiver<u64>,
    done: bool,
    /// For `Accept: ...;as=Table`: each event's object is a one-row Table.
    table: Option<TableView>,
}

struct TableView {
    crd: Option<CrdVersion>,
    include: Option<String>,
}

impl WatchStream {
    /// An event line, its object as a Table row when the watch asked for Tables.
    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        match &self.table {
            None => event_line(kind, obj),
            Some(t) => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                let table = table::table(
                    &self.rd,
                    t.crd.as_ref(),
                    std::slice::from_ref(obj),
                    t.include.as_deref(),
                    rv,
                );
                event_line(kind, &table)
            }
        }
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

impl WatchStream {
    fn matches(&self, obj: &Value) -> bool {
        let m = &obj["metadata"];
        self.ns
            .as_deref()
            .is_none_or(|ns| m["namespace"].as_str() == Some(ns))
            && self
                .name
                .as_deref()
                .is_none_or(|n| m["name"].as_str() == Some(n))
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// What a filtered watcher sees of one change: an object entering the filter is ADDED,
    /// one leaving it is DELETED, as the Kubernetes watch cache does.
    fn translate(&self, e: &HistEvent) -> Option<Bytes> {
        if e.rkey != self.rd.key() || self.ns.as_ref().is_some_and(|ns| *ns != e.namespace) {
            return None;
        }
        let now = self.matches(&e.obj);
        let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
        let kind = match (e.kind, before, now) {
            (EventType::Added, _, true) | (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, true, false) | (EventType::Deleted, _, true) => {
                EventType::Deleted
            }
            _ => return None,
        };
        Some(self.line(kind.wire(), &e.obj))
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.rd.kind, "apiVersion": self.rd.api_version(), "metadata": meta}),
        )
    }

    /// Queues what happened since `cursor`, or a 410 ERROR event if that history is gone.
    fn pump(&mut self) {
        self.rv_rx.borrow_and_update();
        let inner = Arc::clone(&self.inner);
        let state = inner.lock_state();
        match state.events_after(self.cursor) {
            Ok(events) => {
                let lines: Vec<Bytes> = events.filter_map(|e| self.translate(e)).collect();
                self.queue.extend(lines);
                self.cursor = state.rv;
            }
            Err(e) => {
                self.queue.push_back(event_line("ERROR", &e.to_status()));
                self.done = true;
            }
        }
    }

    async fn next_chunk(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some((b, self));
            }
            if self.done {
                return None;
            }
            self.pump();
            if !self.queue.is_empty() || self.done {
                continue;
            }
            let (deadline, next_bookmark, bookmarks) =
                (self.deadline, self.next_bookmark, self.bookmarks);
            tokio::select! {
                r = self.rv_rx.changed() => self.done = r.is_err(),
                () = tokio::time::sleep_until(deadline) => self.done = true,
                () = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    let b = self.bookmark(false);
                    self.queue.push_back(b);
                    self.next_bookmark =
                        tokio::time::Instant::now() + self.inner.config.bookmark_interval;
                }
            }
        }
    }
}

/// Starts a watch. Semantics follow the Kubernetes API:
/// - `resourceVersion` unset or `"0"`: synthetic ADDED events for the current objects, then
///   changes from now on.
/// - `sendInitialEvents=true` (streaming list; needs `allowWatchBookmarks=true` and
///   `resourceVersionMatch=NotOlderThan`): the same, then a BOOKMARK annotated
///   `k8s.io/initial-events-end`.
/// - a specific `resourceVersion`: every change after it, or — if the history no longer
///   reaches back that far — a single ERROR event carrying a 410 Expired Status (in a 200
///   response, as a real API server's watch cache does; kube-runtime's watcher re-lists on
///   it, while an HTTP 410 would make it retry the same watch forever).
/// - `allowWatchBookmarks=true`: BOOKMARK events every `bookmark_interval` of silence.
/// - `timeoutSeconds`: the response ends after that long (default 30 minutes).
fn watch(
    inner: &Arc<Inner>,
    t: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(query)?;
    let rv = parse_rv(query.get("resourceVersion"))?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    if send_initial && (!bookmarks || query.get("resourceVersionMatch") != Some("NotOlderThan")) {
        return Err(ApiError::invalid(
            "sendInitialEvents requires allowWatchBookmarks=true and \
             resourceVersionMatch=NotOlderThan",
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => std::time::Duration::from_mins(30),
        Some(s) => std::time::Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
    };
    let now = tokio::time::Instant::now();
    let mut w = WatchStream {
        inner: Arc::clone(inner),
        rd: t.rd.clone(),
        ns: t.ns.clone(),
        name: t.name.clone(),
        labels,
        fields,
        cursor: 0,
        queue: VecDeque::new(),
        bookmarks,
        deadline: now + timeout,
        next_bookmark: now + inner.config.bookmark_interval,
        rv_rx: inner.rv_tx.subscribe(),
        done: false,
        table: headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(table::wants_table)
            .then(|| TableView {
                crd: inner.lock_state().crd(&t.rd).cloned(),
                include: query.get("includeObject").map(str::to_owned),
            }),
    };
    {
        let state = inner.lock_state();
        match rv {
            Some(rv) if rv > 0 && !send_initial => {
                // Validate now so a bad version fails the same way whatever comes next.
                if let Err(e) = state.events_after(rv) {
                    w.queue.push_back(event_line("ERROR", &e.to_status()));
                    w.done = true;
                }
                w.cursor = rv;
            }
            _ => {
                let lines: Vec<Bytes> = state
                    .list(&t.rd, t.ns.as_deref())
                    .filter(|o| w.matches(o))
                    .map(|o| w.line("ADDED", o))
                    .collect();
                w.queue.extend(lines);
                w.cursor = state.rv;
                if send_initial {
                    let b = w.bookmark(true);
                    w.queue.push_back(b);
                }
            }
        }
    }
    w.rv_rx.borrow_and_update();
    let stream = futures::stream::unfold(w, WatchStream::next_chunk)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_decoding() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=1&x",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a,b)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn routing() {
        let s = State::new(10);
        let t = |p: &str| match route(&s, p) {
            Ok(Route::Resource(t)) => Some((t.rd.plural, t.ns, t.name, t.sub)),
            _ => None,
        };
        let some = |x: &str| Some(x.to_owned());
        assert_eq!(
            t("/api/v1/namespaces/ns/services/a/status"),
            Some(("services".into(), some("ns"), some("a"), some("status")))
        );
        assert_eq!(
            t("/api/v1/services"),
            Some(("services".into(), None, None, None))
        );
        assert_eq!(t("/api/v1/services/a"), None);
        assert_eq!(
            t("/api/v1/namespaces/ns"),
            Some(("namespaces".into(), None, some("ns"), None))
        );
        assert_eq!(
            t("/api/v1/namespaces/ns/status"),
            Some(("namespaces".into(), None, some("ns"), some("status")))
        );
        assert_eq!(
            t("/apis/coordination.k8s.io/v1/namespaces/x/leases/l"),
            Some(("leases".into(), some("x"), some("l"), None))
        );
        assert_eq!(t("/api/v1/namespaces/ns/configmaps/a/status"), None);
        assert_eq!(t("/apis/nope/v1/things"), None);
        assert_eq!(
            t("/api/v1/nodes/n1/status").map(|x| x.3),
            Some(some("status"))
        );
    }
}
