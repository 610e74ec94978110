//! A small stand-in for a Confluent Schema Registry, serving the endpoints
//! privacy-router uses with the real API's status codes and bodies:
//!
//! * `GET /schemas/ids/{id}` → `200 {"schema": …}` (no `schemaType` for
//!   Avro, as Confluent answers), `404 {"error_code": 40403, …}`;
//! * `GET /subjects/{subject}/versions/latest` → `200 {"subject", "version",
//!   "id", "schema"}`, `404 {"error_code": 40401, …}`;
//! * `POST /subjects/{subject}/versions` with
//!   `application/vnd.schemaregistry.v1+json` `{"schema": …}` → `200
//!   {"id": …}`; the same schema (compared as parsed JSON) keeps its id in
//!   every subject and is not added twice to a subject; a schema that is not
//!   valid Avro → `422 {"error_code": 42201, …}`;
//! * `GET /subjects` → the subject names.
//!
//! With credentials set, a request without the right basic-auth header
//! gets `401 {"error_code": 401, …}`. Fault switches: `unavailable` answers
//! `503 {"error_code": 50003, …}` to everything; `hold_ids_from` and
//! `hold_ids_to` keep `GET /schemas/ids/{id}` for ids in that range
//! waiting until released.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct Store {
    /// Schema text by id - 1, with its parsed form for comparison.
    schemas: Vec<(Value, String)>,
    /// Ids per subject, in version order.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// The shared state and fault switches.
#[derive(Default)]
pub struct Inner {
    store: Mutex<Store>,
    /// Answer 503 to everything.
    pub unavailable: AtomicBool,
    /// Hold `GET /schemas/ids/{id}` for ids from this (0: hold nothing)...
    pub hold_ids_from: AtomicU32,
    /// ...up to this one.
    pub hold_ids_to: AtomicU32,
    /// Requests currently held.
    pub held: AtomicU32,
    /// Requests answered 503.
    pub refused: AtomicU64,
    /// Every request served.
    pub requests: AtomicU64,
    /// `user:password` required in basic auth, if set.
    pub credentials: Mutex<Option<String>>,
}

/// A running stand-in.
#[derive(Clone)]
pub struct Registry {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// State and switches.
    pub inner: Arc<Inner>,
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        json!({"error_code": code, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn gate(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(creds) = inner.credentials.lock().unwrap().as_ref() {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds.as_bytes())
        );
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if got != Some(expected.as_str()) {
            return Some(error(StatusCode::UNAUTHORIZED, 401, "Unauthorized"));
        }
    }
    if inner.unavailable.load(Ordering::SeqCst) {
        inner.refused.fetch_add(1, Ordering::SeqCst);
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            50003,
            "Error while forwarding the request to the leader",
        ));
    }
    None
}

async fn by_id(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let Ok(id) = id.parse::<u32>() else {
        return error(StatusCode::NOT_FOUND, 40403, "Schema not found");
    };
    let hold = inner.hold_ids_from.load(Ordering::SeqCst);
    if hold > 0 && id >= hold && id <= inner.hold_ids_to.load(Ordering::SeqCst) {
        inner.held.fetch_add(1, Ordering::SeqCst);
        while inner.hold_ids_from.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        inner.held.fetch_sub(1, Ordering::SeqCst);
    }
    let store = inner.store.lock().unwrap();
    match id
        .checked_sub(1)
        .and_then(|i| store.schemas.get(i as usize))
    {
        Some((_, text)) => ok(json!({ "schema": text })),
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            &format!("Schema {id} not found"),
        ),
    }
}

async fn latest(
    State(inner): State<Arc<Inner>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    match store.subjects.get(&subject) {
        Some(ids) if !ids.is_empty() => {
            let id = *ids.last().unwrap();
            ok(json!({
                "subject": subject,
                "version": ids.len(),
                "id": id,
                "schema": store.schemas[id as usize - 1].1,
            }))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        ),
    }
}

async fn register(
    State(inner): State<Arc<Inner>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 400, "Unrecognized field");
    };
    let Some(text) = req.get("schema").and_then(Value::as_str) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Empty schema");
    };
    if req
        .get("schemaType")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "AVRO")
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    }
    if apache_avro::Schema::parse_str(text).is_err() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Either the input schema or one its references is invalid",
        );
    }
    let parsed: Value = serde_json::from_str(text).unwrap();
    let mut store = inner.store.lock().unwrap();
    let id = match store.schemas.iter().position(|(v, _)| *v == parsed) {
        Some(i) => i as u32 + 1,
        None => {
            store.schemas.push((parsed, text.to_owned()));
            store.schemas.len() as u32
        }
    };
    let versions = store.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    ok(json!({ "id": id }))
}

async fn subjects(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    ok(json!(store.subjects.keys().collect::<Vec<_>>()))
}

impl Registry {
    /// Starts the stand-in on a free port of 127.0.0.1, on the current
    /// tokio runtime.
    pub async fn start() -> Registry {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/schemas/ids/{id}", get(by_id))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route(
                "/subjects/{subject}/versions",
                axum::routing::post(register),
            )
            .route("/subjects", get(subjects))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Registry {
            url: format!("http://{addr}"),
            inner,
        }
    }

    /// Registers directly (as a producer's serializer would), returning the id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let parsed: Value = serde_json::from_str(schema).unwrap();
        let mut store = self.inner.store.lock().unwrap();
        let id = match store.schemas.iter().position(|(v, _)| *v == parsed) {
            Some(i) => i as u32 + 1,
            None => {
                store.schemas.push((parsed, schema.to_owned()));
                store.schemas.len() as u32
            }
        };
        let versions = store.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    /// The schema text of an id.
    pub fn schema(&self, id: u32) -> Option<String> {
        let store = self.inner.store.lock().unwrap();
        store
            .schemas
            .get(id.checked_sub(1)? as usize)
            .map(|(_, t)| t.clone())
    }

    /// Every subject with its ids.
    pub fn subjects(&self) -> BTreeMap<String, Vec<u32>> {
        self.inner.store.lock().unwrap().subjects.clone()
    }
}
