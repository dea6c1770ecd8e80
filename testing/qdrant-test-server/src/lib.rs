//! **TEST-ONLY.** A gRPC server that speaks the part of Qdrant's API the `qdrant-semantic`
//! backend of `cache-semantic` uses, backed by Qdrant's own embedded engine,
//! [`qdrant-edge`](https://crates.io/crates/qdrant-edge) `=0.7.0`.
//!
//! No Qdrant server can be installed on the machines this project is developed and tested on, so
//! the backend's tests run against this instead. It is **not a Qdrant server**:
//!
//! * The wire protocol is the real one: the services are the tonic server traits generated from
//!   Qdrant's `.proto` files and re-exported by `qdrant-client` (`qdrant.Qdrant`,
//!   `qdrant.Collections`, `qdrant.Points`), so the backend talks to it with the unmodified
//!   `qdrant-client`.
//! * Storage, payload filtering, payload indexes, scoring and the score threshold are
//!   qdrant-edge's, i.e. the segment/shard code of Qdrant itself: a filter, a score or a
//!   threshold behaves as it does in a Qdrant server of the same generation.
//! * The translation between the gRPC messages and qdrant-edge's types is ours (this crate). It
//!   goes through Qdrant's REST JSON shapes, which qdrant-edge's types deserialize.
//! * Only the RPCs listed below are implemented; every other RPC answers `UNIMPLEMENTED`.
//!   `qdrant.Collections`: `Get`, `List`, `Create`, `Delete`, `CollectionExists`.
//!   `qdrant.Points`: `Upsert`, `Delete`, `CreateFieldIndex`, `Count`, `Query` (nearest
//!   neighbours to one dense vector, no prefetch, no named vectors).
//!   `qdrant.Qdrant`: `HealthCheck`.
//! * Not covered at all: clustering, shards and replication, consistency and write ordering,
//!   snapshots, the REST API, API keys and TLS, strict mode, optimizers running in the background,
//!   persistence across [`TestServer`] instances (data lives in a temporary directory and goes
//!   away with the server).
//!
//! For tests it adds controls a real server does not have: [`TestServer::stop`] /
//! [`TestServer::restart`] (an outage on the same port, data kept), [`TestServer::set_latency`]
//! (a slow server) and direct, out-of-band inspection ([`TestServer::points_count`]).
//!
//! Never a runtime dependency of the project: it is a workspace member outside
//! `default-members`, used as a dev-dependency only.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use qdrant_client::qdrant::points_server::{Points, PointsServer};
use qdrant_client::qdrant::qdrant_server::{Qdrant, QdrantServer};
use qdrant_client::qdrant::{self as pb};
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldIndexOperations, Filter, OperationError, Payload, PayloadFieldSchema, PayloadSchemaType,
    PointId, PointInsertOperations, PointOperations, PointStructPersisted, QueryEnum, QueryRequest,
    ScoringQuery, SearchParams, UpdateOperation, VectorStructPersisted, WithPayloadInterface,
    WithVector,
};
use serde_json::{Map, Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The engine behind the server, for reports.
pub const ENGINE: &str = "qdrant-edge 0.7.0";

type RpcResult<T> = Result<Response<T>, Status>;

// ------------------------------------------------------------------------------------------------
// Server lifecycle
// ------------------------------------------------------------------------------------------------

/// A running test server on `127.0.0.1` (see the crate docs for what it is and is not).
///
/// Dropping it stops the server and deletes its data.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    running: Option<Running>,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .field("engine", &ENGINE)
            .finish()
    }
}

impl TestServer {
    /// Starts a server on a free loopback port. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// The port cannot be bound or the temporary data directory cannot be created.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            dir: tempfile::Builder::new()
                .prefix("qdrant-test-server-")
                .tempdir()?,
            collections: Mutex::new(HashMap::new()),
            latency: Mutex::new(Duration::ZERO),
            next_dir: Mutex::new(0),
        });
        let mut server = TestServer {
            addr,
            state,
            running: None,
        };
        server.serve(listener);
        Ok(server)
    }

    /// The gRPC URL to give `qdrant-client` (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server is accepting connections.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let svc = Service {
            state: Arc::clone(&self.state),
        };
        let router = tonic::transport::Server::builder()
            .add_service(QdrantServer::new(svc.clone()))
            .add_service(CollectionsServer::new(svc.clone()))
            .add_service(PointsServer::new(svc).max_decoding_message_size(64 << 20));
        // TCP_NODELAY, as tonic's `serve(addr)` sets by default (Qdrant's gRPC server is tonic);
        // `serve_with_incoming` leaves it off, and then a response that does not fit one segment
        // waits for the client's delayed ACK (~40 ms).
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        });
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.await;
        }));
        self.running = Some(Running { shutdown: tx, task });
    }

    /// Stops serving (the port is closed; open connections are told to go away); the data is
    /// kept for [`TestServer::restart`].
    pub async fn stop(&mut self) {
        if let Some(Running { shutdown, mut task }) = self.running.take() {
            let _ = shutdown.send(());
            // Graceful shutdown waits for clients to hang up; do not let a test wait for long.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Serves again on the same port, with the same data.
    ///
    /// # Errors
    /// The port cannot be bound again.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Delays every RPC by `latency` before it is handled (a slow or overloaded server).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.state.latency) = latency;
    }

    /// The number of points stored in `collection` (all of them, expired or not), read directly
    /// from the engine; `None` if the collection does not exist.
    pub fn points_count(&self, collection: &str) -> Option<usize> {
        let c = self.state.collection(collection).ok()?;
        c.shard
            .count(CountRequest {
                filter: None,
                exact: true,
            })
            .ok()
    }

    /// Runs qdrant-edge's optimizers on `collection` until they have nothing left to do (this
    /// builds the HNSW index once a segment is large enough); a Qdrant server does this in the
    /// background. Returns whether anything was optimized.
    ///
    /// # Errors
    /// The collection does not exist or the engine failed.
    pub fn optimize(&self, collection: &str) -> Result<bool, String> {
        let c = self
            .state
            .collection(collection)
            .map_err(|s| s.message().to_owned())?;
        c.shard.optimize().map_err(|e| e.to_string())
    }

    /// Number of vectors in `collection` covered by a vector index (HNSW); `None` if the
    /// collection does not exist.
    pub fn indexed_vectors_count(&self, collection: &str) -> Option<usize> {
        let c = self.state.collection(collection).ok()?;
        Some(c.shard.info().indexed_vectors_count)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(Running { shutdown, task }) = self.running.take() {
            let _ = shutdown.send(());
            task.abort();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------------

struct State {
    // Declared (so dropped) before `dir`: the engine flushes to its directory when dropped.
    collections: Mutex<HashMap<String, Arc<Collection>>>,
    latency: Mutex<Duration>,
    next_dir: Mutex<u64>,
    dir: tempfile::TempDir,
}

struct Collection {
    shard: EdgeShard,
    /// What `Create` was given, echoed by `Get`.
    vectors_config: pb::VectorsConfig,
    quantization_config: Option<pb::QuantizationConfig>,
    /// The unnamed vector's size and distance (`None` for named vectors, which points
    /// operations here do not support).
    single: Option<(usize, Distance)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn collection(&self, name: &str) -> Result<Arc<Collection>, Status> {
        lock(&self.collections)
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("Collection `{name}` doesn't exist!")))
    }

    async fn delay(&self) {
        let latency = *lock(&self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

#[derive(Clone)]
struct Service {
    state: Arc<State>,
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("engine task failed: {e}")))?
}

fn engine_error(e: OperationError) -> Status {
    match e {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. } => {
            Status::invalid_argument(format!("Wrong input: {e}"))
        }
        OperationError::PointIdError { .. } => Status::not_found(e.to_string()),
        OperationError::Cancelled { .. } => Status::cancelled(e.to_string()),
        OperationError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "qdrant-test-server ({ENGINE}) does not implement {what}"
    ))
}

fn elapsed(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn completed(start: Instant) -> pb::PointsOperationResponse {
    pb::PointsOperationResponse {
        result: Some(pb::UpdateResult {
            operation_id: None,
            status: pb::UpdateStatus::Completed as i32,
        }),
        time: elapsed(start),
        usage: None,
    }
}

// ------------------------------------------------------------------------------------------------
// gRPC <-> qdrant-edge (through Qdrant's REST JSON shapes)
// ------------------------------------------------------------------------------------------------

fn value_to_json(v: &pb::Value) -> Json {
    use pb::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::DoubleValue(d)) => json!(d),
        Some(Kind::IntegerValue(i)) => json!(i),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn json_to_value(v: &Json) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(pb::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(pb::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

fn payload_from_grpc(p: &HashMap<String, pb::Value>) -> Result<Payload, Status> {
    let map: Map<String, Json> = p
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    serde_json::from_value(Json::Object(map)).map_err(|e| invalid(format!("payload: {e}")))
}

fn payload_to_grpc(p: &Payload) -> HashMap<String, pb::Value> {
    match serde_json::to_value(p) {
        Ok(Json::Object(o)) => o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
        _ => HashMap::new(),
    }
}

fn point_id_from_grpc(id: Option<&pb::PointId>) -> Result<PointId, Status> {
    use pb::point_id::PointIdOptions;
    match id.and_then(|i| i.point_id_options.as_ref()) {
        Some(PointIdOptions::Num(n)) => Ok(PointId::NumId(*n)),
        Some(PointIdOptions::Uuid(s)) => qdrant_edge::external::uuid::Uuid::parse_str(s)
            .map(PointId::Uuid)
            .map_err(|e| invalid(format!("Unable to parse UUID: {s}: {e}"))),
        None => Err(invalid("point id is missing")),
    }
}

fn point_id_to_grpc(id: &PointId) -> pb::PointId {
    use pb::point_id::PointIdOptions;
    pb::PointId {
        point_id_options: Some(match id {
            PointId::NumId(n) => PointIdOptions::Num(*n),
            PointId::Uuid(u) => PointIdOptions::Uuid(u.hyphenated().to_string()),
        }),
    }
}

fn point_id_json(id: &pb::PointId) -> Result<Json, Status> {
    Ok(match point_id_from_grpc(Some(id))? {
        PointId::NumId(n) => json!(n),
        PointId::Uuid(u) => json!(u.hyphenated().to_string()),
    })
}

fn filter_from_grpc(f: Option<&pb::Filter>) -> Result<Option<Filter>, Status> {
    match f {
        None => Ok(None),
        Some(f) => serde_json::from_value(filter_json(f)?)
            .map(Some)
            .map_err(|e| invalid(format!("filter: {e}"))),
    }
}

fn filter_json(f: &pb::Filter) -> Result<Json, Status> {
    let list = |cs: &[pb::Condition]| -> Result<Json, Status> {
        Ok(Json::Array(
            cs.iter().map(condition_json).collect::<Result<_, _>>()?,
        ))
    };
    let mut o = Map::new();
    if !f.must.is_empty() {
        o.insert("must".into(), list(&f.must)?);
    }
    if !f.should.is_empty() {
        o.insert("should".into(), list(&f.should)?);
    }
    if !f.must_not.is_empty() {
        o.insert("must_not".into(), list(&f.must_not)?);
    }
    if let Some(ms) = &f.min_should {
        o.insert(
            "min_should".into(),
            json!({ "conditions": list(&ms.conditions)?, "min_count": ms.min_count }),
        );
    }
    Ok(Json::Object(o))
}

fn condition_json(c: &pb::Condition) -> Result<Json, Status> {
    use pb::condition::ConditionOneOf as C;
    match c.condition_one_of.as_ref() {
        None => Err(invalid("empty filter condition")),
        Some(C::Field(f)) => field_condition_json(f),
        Some(C::IsEmpty(c)) => Ok(json!({ "is_empty": { "key": c.key } })),
        Some(C::IsNull(c)) => Ok(json!({ "is_null": { "key": c.key } })),
        Some(C::HasId(c)) => Ok(json!({
            "has_id": c.has_id.iter().map(point_id_json).collect::<Result<Vec<_>, _>>()?
        })),
        Some(C::HasVector(c)) => Ok(json!({ "has_vector": c.has_vector })),
        Some(C::Filter(f)) => filter_json(f),
        Some(C::Nested(n)) => {
            let filter = n
                .filter
                .as_ref()
                .ok_or_else(|| invalid("nested condition without a filter"))?;
            Ok(json!({ "nested": { "key": n.key, "filter": filter_json(filter)? } }))
        }
        Some(C::Slice(_)) => Err(unsupported("slice conditions")),
    }
}

fn field_condition_json(f: &pb::FieldCondition) -> Result<Json, Status> {
    use pb::r#match::MatchValue as M;
    if f.geo_bounding_box.is_some()
        || f.geo_radius.is_some()
        || f.geo_polygon.is_some()
        || f.datetime_range.is_some()
    {
        return Err(unsupported("geo and datetime conditions"));
    }
    let mut o = Map::new();
    o.insert("key".into(), json!(f.key));
    if let Some(m) = f.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
        let m = match m {
            M::Keyword(s) => json!({ "value": s }),
            M::Integer(i) => json!({ "value": i }),
            M::Boolean(b) => json!({ "value": b }),
            M::Text(s) => json!({ "text": s }),
            M::Phrase(s) => json!({ "phrase": s }),
            M::TextAny(s) => json!({ "text_any": s }),
            M::Keywords(r) => json!({ "any": r.strings }),
            M::Integers(r) => json!({ "any": r.integers }),
            M::ExceptKeywords(r) => json!({ "except": r.strings }),
            M::ExceptIntegers(r) => json!({ "except": r.integers }),
            M::Prefix(_) | M::Substring(_) => {
                return Err(unsupported("prefix and substring matches"));
            }
        };
        o.insert("match".into(), m);
    }
    let bounds = |pairs: [(&str, Option<f64>); 4]| -> Json {
        Json::Object(
            pairs
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), json!(v))))
                .collect(),
        )
    };
    if let Some(r) = &f.range {
        o.insert(
            "range".into(),
            bounds([("lt", r.lt), ("gt", r.gt), ("gte", r.gte), ("lte", r.lte)]),
        );
    }
    if let Some(r) = &f.values_count {
        let c = |v: Option<u64>| v.map(|v| v as f64);
        o.insert(
            "values_count".into(),
            bounds([
                ("lt", c(r.lt)),
                ("gt", c(r.gt)),
                ("gte", c(r.gte)),
                ("lte", c(r.lte)),
            ]),
        );
    }
    if let Some(b) = f.is_empty {
        o.insert("is_empty".into(), json!(b));
    }
    if let Some(b) = f.is_null {
        o.insert("is_null".into(), json!(b));
    }
    Ok(Json::Object(o))
}

fn distance_from_grpc(d: i32) -> Result<Distance, Status> {
    match pb::Distance::try_from(d) {
        Ok(pb::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(pb::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(pb::Distance::Dot) => Ok(Distance::Dot),
        Ok(pb::Distance::Manhattan) => Ok(Distance::Manhattan),
        _ => Err(invalid(format!("unknown distance {d}"))),
    }
}

fn quantization_json(q: &pb::QuantizationConfig) -> Result<Json, Status> {
    use pb::quantization_config::Quantization as Q;
    match q.quantization.as_ref() {
        None => Err(invalid("empty quantization config")),
        Some(Q::Scalar(s)) => {
            if pb::QuantizationType::try_from(s.r#type) != Ok(pb::QuantizationType::Int8) {
                return Err(invalid("scalar quantization type must be int8"));
            }
            let mut o = Map::new();
            o.insert("type".into(), json!("int8"));
            if let Some(q) = s.quantile {
                o.insert("quantile".into(), json!(q));
            }
            Ok(json!({ "scalar": o }))
        }
        Some(Q::Product(p)) => {
            let compression = match pb::CompressionRatio::try_from(p.compression) {
                Ok(pb::CompressionRatio::X4) => "x4",
                Ok(pb::CompressionRatio::X8) => "x8",
                Ok(pb::CompressionRatio::X16) => "x16",
                Ok(pb::CompressionRatio::X32) => "x32",
                Ok(pb::CompressionRatio::X64) => "x64",
                Err(_) => return Err(invalid("unknown product quantization compression")),
            };
            Ok(json!({ "product": { "compression": compression } }))
        }
        Some(Q::Binary(b)) => {
            if b.encoding.is_some() || b.query_encoding.is_some() {
                return Err(unsupported("binary quantization encodings"));
            }
            Ok(json!({ "binary": {} }))
        }
        Some(Q::Turboquant(_)) => Err(unsupported("turbo quantization")),
    }
}

fn vector_params(p: &pb::VectorParams) -> Result<EdgeVectorParams, Status> {
    if p.size == 0 {
        return Err(invalid(
            "Validation error in vectors_config: size must be ≥ 1",
        ));
    }
    if p.multivector_config.is_some() || p.datatype.is_some() {
        return Err(unsupported("multivectors and vector datatypes"));
    }
    let mut b = EdgeVectorParams::builder(p.size as usize, distance_from_grpc(p.distance)?);
    if let Some(q) = &p.quantization_config {
        b = b.quantization_config(
            serde_json::from_value(quantization_json(q)?)
                .map_err(|e| invalid(format!("quantization_config: {e}")))?,
        );
    }
    Ok(b.build())
}

fn search_params(p: &pb::SearchParams) -> Result<SearchParams, Status> {
    let mut o = Map::new();
    if let Some(ef) = p.hnsw_ef {
        o.insert("hnsw_ef".into(), json!(ef));
    }
    if let Some(exact) = p.exact {
        o.insert("exact".into(), json!(exact));
    }
    if let Some(q) = &p.quantization {
        let mut qo = Map::new();
        if let Some(v) = q.ignore {
            qo.insert("ignore".into(), json!(v));
        }
        if let Some(v) = q.rescore {
            qo.insert("rescore".into(), json!(v));
        }
        if let Some(v) = q.oversampling {
            qo.insert("oversampling".into(), json!(v));
        }
        o.insert("quantization".into(), Json::Object(qo));
    }
    if let Some(v) = p.indexed_only {
        o.insert("indexed_only".into(), json!(v));
    }
    if let Some(a) = &p.acorn {
        let mut ao = Map::new();
        if let Some(v) = a.enable {
            ao.insert("enable".into(), json!(v));
        }
        if let Some(v) = a.max_selectivity {
            ao.insert("max_selectivity".into(), json!(v));
        }
        o.insert("acorn".into(), Json::Object(ao));
    }
    if p.idf.is_some() {
        return Err(unsupported("idf search params"));
    }
    serde_json::from_value(Json::Object(o)).map_err(|e| invalid(format!("params: {e}")))
}

fn with_payload(w: Option<&pb::WithPayloadSelector>) -> Result<WithPayloadInterface, Status> {
    use pb::with_payload_selector::SelectorOptions as S;
    let j = match w.and_then(|w| w.selector_options.as_ref()) {
        None => json!(false),
        Some(S::Enable(b)) => json!(b),
        Some(S::Include(i)) => json!({ "include": i.fields }),
        Some(S::Exclude(e)) => json!({ "exclude": e.fields }),
    };
    serde_json::from_value(j).map_err(|e| invalid(format!("with_payload: {e}")))
}

fn dense_vector(v: &pb::Vector) -> Result<Vec<f32>, Status> {
    use pb::vector::Vector as V;
    match &v.vector {
        Some(V::Dense(d)) => Ok(d.data.clone()),
        Some(_) => Err(unsupported("sparse, multi-dense and inference vectors")),
        #[allow(deprecated)]
        None => Ok(v.data.clone()),
    }
}

fn collection_info(c: &Collection) -> pb::CollectionInfo {
    let info = c.shard.info();
    let payload_schema = info
        .payload_schema
        .iter()
        .map(|(k, v)| {
            let data_type = match v.data_type {
                PayloadSchemaType::Keyword => pb::PayloadSchemaType::Keyword,
                PayloadSchemaType::Integer => pb::PayloadSchemaType::Integer,
                PayloadSchemaType::Float => pb::PayloadSchemaType::Float,
                PayloadSchemaType::Geo => pb::PayloadSchemaType::Geo,
                PayloadSchemaType::Text => pb::PayloadSchemaType::Text,
                PayloadSchemaType::Bool => pb::PayloadSchemaType::Bool,
                PayloadSchemaType::Datetime => pb::PayloadSchemaType::Datetime,
                PayloadSchemaType::Uuid => pb::PayloadSchemaType::Uuid,
            };
            (
                k.to_string(),
                pb::PayloadSchemaInfo {
                    data_type: data_type as i32,
                    params: None,
                    points: Some(v.points as u64),
                },
            )
        })
        .collect();
    pb::CollectionInfo {
        status: pb::CollectionStatus::Green as i32,
        optimizer_status: Some(pb::OptimizerStatus {
            ok: true,
            error: String::new(),
        }),
        segments_count: info.segments_count as u64,
        config: Some(pb::CollectionConfig {
            params: Some(pb::CollectionParams {
                shard_number: 1,
                vectors_config: Some(c.vectors_config.clone()),
                replication_factor: Some(1),
                write_consistency_factor: Some(1),
                ..Default::default()
            }),
            quantization_config: c.quantization_config,
            ..Default::default()
        }),
        payload_schema,
        points_count: Some(info.points_count as u64),
        indexed_vectors_count: Some(info.indexed_vectors_count as u64),
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------------------------
// qdrant.Qdrant
// ------------------------------------------------------------------------------------------------

#[tonic::async_trait]
impl Qdrant for Service {
    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> RpcResult<pb::HealthCheckReply> {
        self.state.delay().await;
        Ok(Response::new(pb::HealthCheckReply {
            title: format!("qdrant-test-server (TEST ONLY, {ENGINE})"),
            version: "0.7.0-edge".to_owned(),
            commit: None,
        }))
    }
}

// ------------------------------------------------------------------------------------------------
// qdrant.Collections
// ------------------------------------------------------------------------------------------------

#[tonic::async_trait]
impl Collections for Service {
    async fn get(
        &self,
        request: Request<pb::GetCollectionInfoRequest>,
    ) -> RpcResult<pb::GetCollectionInfoResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let c = self.state.collection(&request.get_ref().collection_name)?;
        let result = blocking(move || Ok(collection_info(&c))).await?;
        Ok(Response::new(pb::GetCollectionInfoResponse {
            result: Some(result),
            time: elapsed(start),
        }))
    }

    async fn list(
        &self,
        _: Request<pb::ListCollectionsRequest>,
    ) -> RpcResult<pb::ListCollectionsResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let mut names: Vec<String> = lock(&self.state.collections).keys().cloned().collect();
        names.sort();
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: names
                .into_iter()
                .map(|name| pb::CollectionDescription { name })
                .collect(),
            time: elapsed(start),
        }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateCollection>,
    ) -> RpcResult<pb::CollectionOperationResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        let name = req.collection_name.clone();
        if name.is_empty() || name.contains(['/', '\\', '\0']) {
            return Err(invalid(format!("invalid collection name {name:?}")));
        }
        if req.sparse_vectors_config.is_some() {
            return Err(unsupported("sparse vectors"));
        }
        let vectors_config = req
            .vectors_config
            .clone()
            .ok_or_else(|| invalid("vectors_config is required"))?;
        let mut builder = EdgeConfig::builder();
        let single = match vectors_config.config.as_ref() {
            Some(pb::vectors_config::Config::Params(p)) => {
                let params = vector_params(p)?;
                let single = (params.size, params.distance);
                builder = builder.vector(qdrant_edge::DEFAULT_VECTOR_NAME, params);
                Some(single)
            }
            Some(pb::vectors_config::Config::ParamsMap(m)) => {
                for (vname, p) in &m.map {
                    builder = builder.vector(vname.as_str(), vector_params(p)?);
                }
                None
            }
            None => return Err(invalid("vectors_config is empty")),
        };
        if let Some(q) = &req.quantization_config {
            builder = builder.quantization_config(
                serde_json::from_value(quantization_json(q)?)
                    .map_err(|e| invalid(format!("quantization_config: {e}")))?,
            );
        }
        let config = builder.build();
        let dir = {
            let mut n = lock(&self.state.next_dir);
            *n += 1;
            self.state.dir.path().join(format!("c{n}"))
        };
        if lock(&self.state.collections).contains_key(&name) {
            return Err(Status::already_exists(format!(
                "Wrong input: Collection `{name}` already exists!"
            )));
        }
        let shard = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
            EdgeShard::new(Path::new(&dir), config).map_err(engine_error)
        })
        .await?;
        let collection = Arc::new(Collection {
            shard,
            vectors_config,
            quantization_config: req.quantization_config,
            single,
        });
        let mut all = lock(&self.state.collections);
        if all.contains_key(&name) {
            return Err(Status::already_exists(format!(
                "Wrong input: Collection `{name}` already exists!"
            )));
        }
        all.insert(name, collection);
        Ok(Response::new(pb::CollectionOperationResponse {
            result: true,
            time: elapsed(start),
        }))
    }

    async fn update(
        &self,
        _: Request<pb::UpdateCollection>,
    ) -> RpcResult<pb::CollectionOperationResponse> {
        Err(unsupported("Collections/Update"))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteCollection>,
    ) -> RpcResult<pb::CollectionOperationResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let removed = lock(&self.state.collections).remove(&request.get_ref().collection_name);
        let result = removed.is_some();
        if let Some(c) = removed {
            // The engine flushes on drop; do that off the async workers.
            blocking(move || {
                drop(c);
                Ok(())
            })
            .await?;
        }
        Ok(Response::new(pb::CollectionOperationResponse {
            result,
            time: elapsed(start),
        }))
    }

    async fn update_aliases(
        &self,
        _: Request<pb::ChangeAliases>,
    ) -> RpcResult<pb::CollectionOperationResponse> {
        Err(unsupported("Collections/UpdateAliases"))
    }

    async fn list_collection_aliases(
        &self,
        _: Request<pb::ListCollectionAliasesRequest>,
    ) -> RpcResult<pb::ListAliasesResponse> {
        Err(unsupported("Collections/ListCollectionAliases"))
    }

    async fn list_aliases(
        &self,
        _: Request<pb::ListAliasesRequest>,
    ) -> RpcResult<pb::ListAliasesResponse> {
        Err(unsupported("Collections/ListAliases"))
    }

    async fn collection_cluster_info(
        &self,
        _: Request<pb::CollectionClusterInfoRequest>,
    ) -> RpcResult<pb::CollectionClusterInfoResponse> {
        Err(unsupported("Collections/CollectionClusterInfo"))
    }

    async fn collection_exists(
        &self,
        request: Request<pb::CollectionExistsRequest>,
    ) -> RpcResult<pb::CollectionExistsResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let exists = lock(&self.state.collections).contains_key(&request.get_ref().collection_name);
        Ok(Response::new(pb::CollectionExistsResponse {
            result: Some(pb::CollectionExists { exists }),
            time: elapsed(start),
        }))
    }

    async fn update_collection_cluster_setup(
        &self,
        _: Request<pb::UpdateCollectionClusterSetupRequest>,
    ) -> RpcResult<pb::UpdateCollectionClusterSetupResponse> {
        Err(unsupported("Collections/UpdateCollectionClusterSetup"))
    }

    async fn create_shard_key(
        &self,
        _: Request<pb::CreateShardKeyRequest>,
    ) -> RpcResult<pb::CreateShardKeyResponse> {
        Err(unsupported("Collections/CreateShardKey"))
    }

    async fn delete_shard_key(
        &self,
        _: Request<pb::DeleteShardKeyRequest>,
    ) -> RpcResult<pb::DeleteShardKeyResponse> {
        Err(unsupported("Collections/DeleteShardKey"))
    }

    async fn list_shard_keys(
        &self,
        _: Request<pb::ListShardKeysRequest>,
    ) -> RpcResult<pb::ListShardKeysResponse> {
        Err(unsupported("Collections/ListShardKeys"))
    }
}

// ------------------------------------------------------------------------------------------------
// qdrant.Points
// ------------------------------------------------------------------------------------------------

/// The collection's single unnamed vector config, or an error for named-vector collections.
fn single_vector(c: &Collection, name: &str) -> Result<(usize, Distance), Status> {
    c.single
        .ok_or_else(|| unsupported(&format!("points operations on named vectors (`{name}`)")))
}

#[tonic::async_trait]
impl Points for Service {
    async fn upsert(
        &self,
        request: Request<pb::UpsertPoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        if req.update_filter.is_some() || req.update_mode.is_some() {
            return Err(unsupported("conditional upserts"));
        }
        let c = self.state.collection(&req.collection_name)?;
        let (size, _) = single_vector(&c, &req.collection_name)?;
        let mut points = Vec::with_capacity(req.points.len());
        for p in &req.points {
            let id = point_id_from_grpc(p.id.as_ref())?;
            let vector = match p.vectors.as_ref().and_then(|v| v.vectors_options.as_ref()) {
                Some(pb::vectors::VectorsOptions::Vector(v)) => dense_vector(v)?,
                Some(pb::vectors::VectorsOptions::Vectors(_)) => {
                    return Err(unsupported("named vectors"));
                }
                None => return Err(invalid("point without a vector")),
            };
            if vector.len() != size {
                return Err(invalid(format!(
                    "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                    vector.len()
                )));
            }
            points.push(PointStructPersisted {
                id,
                vector: VectorStructPersisted::Single(vector),
                payload: Some(payload_from_grpc(&p.payload)?),
            });
        }
        blocking(move || {
            c.shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(engine_error)
        })
        .await?;
        Ok(Response::new(completed(start)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeletePoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        use pb::points_selector::PointsSelectorOneOf as S;
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        let c = self.state.collection(&req.collection_name)?;
        let op = match req.points.and_then(|p| p.points_selector_one_of) {
            Some(S::Points(ids)) => PointOperations::DeletePoints {
                ids: ids
                    .ids
                    .iter()
                    .map(|i| point_id_from_grpc(Some(i)))
                    .collect::<Result<_, _>>()?,
            },
            Some(S::Filter(f)) => PointOperations::DeletePointsByFilter(
                filter_from_grpc(Some(&f))?.unwrap_or_default(),
            ),
            None => return Err(invalid("points selector is required")),
        };
        blocking(move || {
            c.shard
                .update(UpdateOperation::PointOperation(op))
                .map_err(engine_error)
        })
        .await?;
        Ok(Response::new(completed(start)))
    }

    async fn get(&self, _: Request<pb::GetPoints>) -> RpcResult<pb::GetResponse> {
        Err(unsupported("Points/Get"))
    }

    async fn update_vectors(
        &self,
        _: Request<pb::UpdatePointVectors>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/UpdateVectors"))
    }

    async fn delete_vectors(
        &self,
        _: Request<pb::DeletePointVectors>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/DeleteVectors"))
    }

    async fn set_payload(
        &self,
        _: Request<pb::SetPayloadPoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/SetPayload"))
    }

    async fn overwrite_payload(
        &self,
        _: Request<pb::SetPayloadPoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/OverwritePayload"))
    }

    async fn delete_payload(
        &self,
        _: Request<pb::DeletePayloadPoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/DeletePayload"))
    }

    async fn clear_payload(
        &self,
        _: Request<pb::ClearPayloadPoints>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/ClearPayload"))
    }

    async fn create_field_index(
        &self,
        request: Request<pb::CreateFieldIndexCollection>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        let c = self.state.collection(&req.collection_name)?;
        if req.field_index_params.is_some() {
            return Err(unsupported("field index params"));
        }
        let schema = match req.field_type.map(pb::FieldType::try_from) {
            Some(Ok(pb::FieldType::Keyword)) => PayloadSchemaType::Keyword,
            Some(Ok(pb::FieldType::Integer)) => PayloadSchemaType::Integer,
            Some(Ok(pb::FieldType::Float)) => PayloadSchemaType::Float,
            Some(Ok(pb::FieldType::Geo)) => PayloadSchemaType::Geo,
            Some(Ok(pb::FieldType::Text)) => PayloadSchemaType::Text,
            Some(Ok(pb::FieldType::Bool)) => PayloadSchemaType::Bool,
            Some(Ok(pb::FieldType::Datetime)) => PayloadSchemaType::Datetime,
            Some(Ok(pb::FieldType::Uuid)) => PayloadSchemaType::Uuid,
            _ => return Err(invalid("field_type is required")),
        };
        let field_name = serde_json::from_value(json!(req.field_name))
            .map_err(|e| invalid(format!("field_name: {e}")))?;
        blocking(move || {
            c.shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                    }),
                ))
                .map_err(engine_error)
        })
        .await?;
        Ok(Response::new(completed(start)))
    }

    async fn delete_field_index(
        &self,
        _: Request<pb::DeleteFieldIndexCollection>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/DeleteFieldIndex"))
    }

    async fn create_vector_name(
        &self,
        _: Request<pb::CreateVectorNameRequest>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/CreateVectorName"))
    }

    async fn delete_vector_name(
        &self,
        _: Request<pb::DeleteVectorNameRequest>,
    ) -> RpcResult<pb::PointsOperationResponse> {
        Err(unsupported("Points/DeleteVectorName"))
    }

    async fn search(&self, _: Request<pb::SearchPoints>) -> RpcResult<pb::SearchResponse> {
        Err(unsupported("Points/Search (use Query)"))
    }

    async fn search_batch(
        &self,
        _: Request<pb::SearchBatchPoints>,
    ) -> RpcResult<pb::SearchBatchResponse> {
        Err(unsupported("Points/SearchBatch"))
    }

    async fn search_groups(
        &self,
        _: Request<pb::SearchPointGroups>,
    ) -> RpcResult<pb::SearchGroupsResponse> {
        Err(unsupported("Points/SearchGroups"))
    }

    async fn scroll(&self, _: Request<pb::ScrollPoints>) -> RpcResult<pb::ScrollResponse> {
        Err(unsupported("Points/Scroll"))
    }

    async fn recommend(&self, _: Request<pb::RecommendPoints>) -> RpcResult<pb::RecommendResponse> {
        Err(unsupported("Points/Recommend"))
    }

    async fn recommend_batch(
        &self,
        _: Request<pb::RecommendBatchPoints>,
    ) -> RpcResult<pb::RecommendBatchResponse> {
        Err(unsupported("Points/RecommendBatch"))
    }

    async fn recommend_groups(
        &self,
        _: Request<pb::RecommendPointGroups>,
    ) -> RpcResult<pb::RecommendGroupsResponse> {
        Err(unsupported("Points/RecommendGroups"))
    }

    async fn discover(&self, _: Request<pb::DiscoverPoints>) -> RpcResult<pb::DiscoverResponse> {
        Err(unsupported("Points/Discover"))
    }

    async fn discover_batch(
        &self,
        _: Request<pb::DiscoverBatchPoints>,
    ) -> RpcResult<pb::DiscoverBatchResponse> {
        Err(unsupported("Points/DiscoverBatch"))
    }

    async fn count(&self, request: Request<pb::CountPoints>) -> RpcResult<pb::CountResponse> {
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        let c = self.state.collection(&req.collection_name)?;
        let filter = filter_from_grpc(req.filter.as_ref())?;
        let exact = req.exact.unwrap_or(true);
        let count = blocking(move || {
            c.shard
                .count(CountRequest { filter, exact })
                .map_err(engine_error)
        })
        .await?;
        Ok(Response::new(pb::CountResponse {
            result: Some(pb::CountResult {
                count: count as u64,
            }),
            time: elapsed(start),
            usage: None,
        }))
    }

    async fn update_batch(
        &self,
        _: Request<pb::UpdateBatchPoints>,
    ) -> RpcResult<pb::UpdateBatchResponse> {
        Err(unsupported("Points/UpdateBatch"))
    }

    async fn query(&self, request: Request<pb::QueryPoints>) -> RpcResult<pb::QueryResponse> {
        use pb::query::Variant as Q;
        use pb::vector_input::Variant as V;
        self.state.delay().await;
        let start = Instant::now();
        let req = request.into_inner();
        if !req.prefetch.is_empty() || req.lookup_from.is_some() {
            return Err(unsupported("prefetch and lookup_from"));
        }
        if req.using.as_deref().is_some_and(|u| !u.is_empty()) {
            return Err(unsupported("named vectors (`using`)"));
        }
        let c = self.state.collection(&req.collection_name)?;
        let (size, _) = single_vector(&c, &req.collection_name)?;
        let vector = match req.query.and_then(|q| q.variant) {
            Some(Q::Nearest(pb::VectorInput {
                variant: Some(V::Dense(d)),
            })) => d.data,
            Some(_) => return Err(unsupported("queries other than nearest to a dense vector")),
            None => return Err(unsupported("queries without a query (scroll)")),
        };
        if vector.len() != size {
            return Err(invalid(format!(
                "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                vector.len()
            )));
        }
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::from(vector))),
            filter: filter_from_grpc(req.filter.as_ref())?,
            score_threshold: req
                .score_threshold
                .map(qdrant_edge::external::ordered_float::OrderedFloat),
            limit: req.limit.unwrap_or(10) as usize,
            offset: req.offset.unwrap_or(0) as usize,
            params: req.params.as_ref().map(search_params).transpose()?,
            with_vector: WithVector::Bool(false),
            with_payload: with_payload(req.with_payload.as_ref())?,
        };
        let points = blocking(move || c.shard.query(request).map_err(engine_error)).await?;
        Ok(Response::new(pb::QueryResponse {
            result: points
                .iter()
                .map(|p| pb::ScoredPoint {
                    id: Some(point_id_to_grpc(&p.id)),
                    payload: p.payload.as_ref().map(payload_to_grpc).unwrap_or_default(),
                    score: p.score,
                    version: p.version,
                    ..Default::default()
                })
                .collect(),
            time: elapsed(start),
            usage: None,
        }))
    }

    async fn query_batch(
        &self,
        _: Request<pb::QueryBatchPoints>,
    ) -> RpcResult<pb::QueryBatchResponse> {
        Err(unsupported("Points/QueryBatch"))
    }

    async fn query_groups(
        &self,
        _: Request<pb::QueryPointGroups>,
    ) -> RpcResult<pb::QueryGroupsResponse> {
        Err(unsupported("Points/QueryGroups"))
    }

    async fn facet(&self, _: Request<pb::FacetCounts>) -> RpcResult<pb::FacetResponse> {
        Err(unsupported("Points/Facet"))
    }

    async fn search_matrix_pairs(
        &self,
        _: Request<pb::SearchMatrixPoints>,
    ) -> RpcResult<pb::SearchMatrixPairsResponse> {
        Err(unsupported("Points/SearchMatrixPairs"))
    }

    async fn search_matrix_offsets(
        &self,
        _: Request<pb::SearchMatrixPoints>,
    ) -> RpcResult<pb::SearchMatrixOffsetsResponse> {
        Err(unsupported("Points/SearchMatrixOffsets"))
    }
}
