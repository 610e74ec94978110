//! A small stand-in for a Confluent Schema Registry, serving the endpoints
//! privacy-router uses with the real API's status codes and bodies:
//!
//! * `GET /schemas/ids/{id}` → `200 {"schema": …}` (no `schemaType` for
//!   Avro, as Confluent answers), `404 {"error_code": 40403, …}`;
//! * `GET /subjects/{subject}/versions/{version|latest}` → `200 {"subject",
//!   "version", "id", "schema"}`; `404 {"error_code": 40401}` for a missing
//!   subject, `404 {"error_code": 40402}` for a missing version, `422
//!   {"error_code": 42202}` for a version that is not a positive number;
//! * `GET /subjects/{subject}/versions` → `[1, 2, …]`, `404 40401`;
//! * `POST /subjects/{subject}/versions` with
//!   `application/vnd.schemaregistry.v1+json` `{"schema": …}` → `200
//!   {"id": …}`; the same schema (compared as parsed JSON) keeps its id in
//!   every subject and is not added twice to a subject; a schema that is not
//!   valid Avro → `422 {"error_code": 42201, …}`; a schema the subject's
//!   compatibility level refuses → `409 {"error_code": 409, "message":
//!   "Schema being registered is incompatible with an earlier schema for
//!   subject …"}` (the level is `BACKWARD` unless set, as on Confluent;
//!   checked with apache-avro's resolution rules);
//! * `POST /compatibility/subjects/{subject}/versions/latest` → `200
//!   {"is_compatible": …}` (with `"messages"` when `verbose=true`); a subject
//!   without versions is compatible;
//! * `GET /config`, `PUT /config`, `GET /config/{subject}`,
//!   `PUT /config/{subject}` with `{"compatibility": LEVEL}` → the level
//!   (`{"compatibilityLevel": …}` on GET, the request echoed on PUT), `422
//!   {"error_code": 42203}` for an unknown level;
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
    /// The global compatibility level (`None`: BACKWARD, Confluent's default).
    global_level: Option<String>,
    /// Levels set per subject.
    levels: BTreeMap<String, String>,
}

const LEVELS: [&str; 7] = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];

impl Store {
    fn level(&self, subject: &str) -> &str {
        self.levels
            .get(subject)
            .or(self.global_level.as_ref())
            .map_or("BACKWARD", String::as_str)
    }

    /// Why `subject`'s level refuses `candidate` as its next version, if it
    /// does: one message per earlier version it cannot be resolved with.
    fn incompatibilities(&self, subject: &str, candidate: &str) -> Vec<String> {
        let level = self.level(subject);
        let ids = self.subjects.get(subject).map(Vec::as_slice).unwrap_or(&[]);
        let against: &[u32] = match level {
            "NONE" => &[],
            l if l.ends_with("_TRANSITIVE") => ids,
            _ => ids.last().map(std::slice::from_ref).unwrap_or(&[]),
        };
        let Ok(new) = apache_avro::Schema::parse_str(candidate) else {
            return vec!["the schema is not valid Avro".to_owned()];
        };
        let mut out = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if !against.contains(id) {
                continue;
            }
            let old = apache_avro::Schema::parse_str(&self.schemas[*id as usize - 1].1)
                .expect("stored schemas parse");
            let backward = level.starts_with("BACKWARD") || level.starts_with("FULL");
            let forward = level.starts_with("FORWARD") || level.starts_with("FULL");
            use apache_avro::schema_compatibility::SchemaCompatibility;
            if backward {
                if let Err(e) = SchemaCompatibility::can_read(&old, &new) {
                    out.push(format!(
                        "{{oldSchemaVersion: {}, compatibility: '{level}', description: 'the new schema cannot read data written with version {}: {e}'}}",
                        i + 1,
                        i + 1
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(&new, &old) {
                    out.push(format!(
                        "{{oldSchemaVersion: {}, compatibility: '{level}', description: 'version {} cannot read data written with the new schema: {e}'}}",
                        i + 1,
                        i + 1
                    ));
                }
            }
        }
        out
    }

    /// Registers `text` (already valid) under `subject`, returning its id.
    fn add(&mut self, subject: &str, parsed: Value, text: &str) -> u32 {
        let id = match self.schemas.iter().position(|(v, _)| *v == parsed) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push((parsed, text.to_owned()));
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }
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
    /// Registrations refused as incompatible (409).
    pub refusals: AtomicU64,
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

async fn version(
    State(inner): State<Arc<Inner>>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    let Some(ids) = store.subjects.get(&subject).filter(|ids| !ids.is_empty()) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    let n = match version.as_str() {
        "latest" | "-1" => ids.len(),
        v => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42202,
                    &format!(
                        "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
                    ),
                )
            }
        },
    };
    match ids.get(n - 1) {
        Some(id) => ok(json!({
            "subject": subject,
            "version": n,
            "id": id,
            "schema": store.schemas[*id as usize - 1].1,
        })),
        None => error(
            StatusCode::NOT_FOUND,
            40402,
            &format!("Version {n} not found."),
        ),
    }
}

async fn versions(
    State(inner): State<Arc<Inner>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    match store.subjects.get(&subject).filter(|ids| !ids.is_empty()) {
        Some(ids) => ok(json!((1..=ids.len()).collect::<Vec<_>>())),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        ),
    }
}

/// The `schema` of a request body, or the error Confluent answers.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refused request
fn requested_schema(body: &[u8]) -> Result<(Value, String), Response> {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return Err(error(StatusCode::BAD_REQUEST, 400, "Unrecognized field"));
    };
    let Some(text) = req.get("schema").and_then(Value::as_str) else {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Empty schema",
        ));
    };
    if req
        .get("schemaType")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "AVRO")
    {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema",
        ));
    }
    if apache_avro::Schema::parse_str(text).is_err() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Either the input schema or one its references is invalid",
        ));
    }
    Ok((serde_json::from_str(text).unwrap(), text.to_owned()))
}

async fn compatibility(
    State(inner): State<Arc<Inner>>,
    Path(subject): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let (_, text) = match requested_schema(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let store = inner.store.lock().unwrap();
    let messages = store.incompatibilities(&subject, &text);
    let mut answer = json!({ "is_compatible": messages.is_empty() });
    if query.as_deref().is_some_and(|q| q.contains("verbose=true")) {
        answer["messages"] = json!(messages);
    }
    ok(answer)
}

async fn get_config(
    State(inner): State<Arc<Inner>>,
    subject: Option<Path<String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    let level = match &subject {
        Some(Path(s)) => store.level(s).to_owned(),
        None => store.level("").to_owned(),
    };
    ok(json!({ "compatibilityLevel": level }))
}

async fn put_config(
    State(inner): State<Arc<Inner>>,
    subject: Option<Path<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&inner, &headers) {
        return r;
    }
    let level = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("compatibility")?.as_str().map(str::to_owned));
    let Some(level) = level.filter(|l| LEVELS.contains(&l.as_str())) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive",
        );
    };
    let mut store = inner.store.lock().unwrap();
    match subject {
        Some(Path(s)) => {
            store.levels.insert(s, level.clone());
        }
        None => store.global_level = Some(level.clone()),
    }
    ok(json!({ "compatibility": level }))
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
    let (parsed, text) = match requested_schema(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut store = inner.store.lock().unwrap();
    // Already a version of this subject: its id, whatever the level says.
    let existing = store.subjects.get(&subject).and_then(|ids| {
        ids.iter()
            .find(|id| store.schemas[**id as usize - 1].0 == parsed)
            .copied()
    });
    if let Some(id) = existing {
        return ok(json!({ "id": id }));
    }
    let messages = store.incompatibilities(&subject, &text);
    if !messages.is_empty() {
        inner.refusals.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::CONFLICT,
            409,
            &format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                messages.join(", ")
            ),
        );
    }
    let id = store.add(&subject, parsed, &text);
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
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/subjects/{subject}/versions", get(versions).post(register))
            .route(
                "/compatibility/subjects/{subject}/versions/latest",
                axum::routing::post(compatibility),
            )
            .route("/config", get(get_config).put(put_config))
            .route("/config/{subject}", get(get_config).put(put_config))
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

    /// Registers directly (as a producer's serializer would, with the
    /// subject's compatibility level ignored), returning the id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let parsed: Value = serde_json::from_str(schema).unwrap();
        self.inner
            .store
            .lock()
            .unwrap()
            .add(subject, parsed, schema)
    }

    /// Sets a subject's compatibility level (`NONE`, `BACKWARD`, …).
    pub fn set_level(&self, subject: &str, level: &str) {
        self.inner
            .store
            .lock()
            .unwrap()
            .levels
            .insert(subject.to_owned(), level.to_owned());
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
