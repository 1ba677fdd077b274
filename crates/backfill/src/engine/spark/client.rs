//! A small Spark Connect client: one session per chunk attempt, SQL
//! commands, queries whose Arrow IPC results are decoded with our own arrow,
//! and DataFrame writes, over tonic with the types Spark generates from its
//! `.proto` files.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use backfill_core::ErrorClass;
use backfill_core::spec::SparkSpec;
use futures::StreamExt;
use spark_connect_proto as pb;
use spark_connect_proto::spark_connect_service_client::SparkConnectServiceClient;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

const CLIENT_TYPE: &str = concat!("backfill/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum SparkError {
    #[error("cannot reach Spark Connect at {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// An error Spark reported, with its message (which starts with
    /// `[ERROR_CLASS]` for classified errors).
    #[error("Spark{}: {message}", exception.as_deref().map(|e| format!(" {e}")).unwrap_or_default())]
    Server {
        code: tonic::Code,
        /// The Java exception class (`org.apache.spark.sql.AnalysisException`).
        exception: Option<String>,
        /// Spark's error class (`TABLE_OR_VIEW_NOT_FOUND`).
        error_class: Option<String>,
        sql_state: Option<String>,
        message: String,
    },
    #[error("decoding Spark's Arrow result: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Spark Connect: {0}")]
    Protocol(String),
}

/// SQLSTATE classes that mean the query itself is wrong: running it again
/// cannot help (syntax or access rule, data exception, unsupported feature,
/// cardinality, constraint).
const PERMANENT_SQLSTATE: &[&str] = &["42", "22", "0A", "21", "23", "2B", "46"];

const PERMANENT_EXCEPTIONS: &[&str] = &[
    "org.apache.spark.sql.AnalysisException",
    "org.apache.spark.sql.catalyst.parser.ParseException",
    "org.apache.spark.sql.catalyst.ExtendedAnalysisException",
    "org.apache.spark.SparkArithmeticException",
    "org.apache.spark.SparkNumberFormatException",
    "org.apache.spark.SparkDateTimeException",
    "org.apache.spark.SparkIllegalArgumentException",
    "org.apache.spark.SparkUnsupportedOperationException",
];

impl SparkError {
    /// Whether a retry can succeed: an unreachable or restarting server, a
    /// lost session or executor, are transient; an error in the SQL or the
    /// data is permanent.
    pub fn class(&self) -> ErrorClass {
        match self {
            SparkError::Connect { .. } => ErrorClass::Transient,
            SparkError::Server {
                code,
                exception,
                error_class,
                sql_state,
                ..
            } => {
                if error_class
                    .as_deref()
                    .is_some_and(|c| c.starts_with("INVALID_HANDLE"))
                {
                    // The server restarted and forgot the session.
                    return ErrorClass::Transient;
                }
                if sql_state
                    .as_deref()
                    .is_some_and(|s| PERMANENT_SQLSTATE.iter().any(|p| s.starts_with(p)))
                    || exception
                        .as_deref()
                        .is_some_and(|e| PERMANENT_EXCEPTIONS.contains(&e))
                {
                    return ErrorClass::Permanent;
                }
                match code {
                    tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::Unimplemented
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange => ErrorClass::Permanent,
                    _ => ErrorClass::Transient,
                }
            }
            SparkError::Arrow(_) | SparkError::Protocol(_) => ErrorClass::Permanent,
        }
    }

    fn from_status(s: tonic::Status) -> SparkError {
        let info = s.get_details_error_info();
        let meta = |k: &str| {
            info.as_ref()
                .and_then(|i| i.metadata.get(k))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let mut message = s.message().to_string();
        if message.is_empty() {
            message = format!("{:?}", s.code());
        }
        let transport =
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) && info.is_none();
        if transport {
            // Connection refused or reset: the server is down or restarting.
            return SparkError::Server {
                code: tonic::Code::Unavailable,
                exception: None,
                error_class: None,
                sql_state: None,
                message,
            };
        }
        SparkError::Server {
            code: s.code(),
            exception: info.as_ref().map(|i| i.reason.clone()),
            error_class: meta("errorClass"),
            sql_state: meta("sqlState"),
            message,
        }
    }
}

/// Adds the bearer token and the URL's extra headers to every call.
#[derive(Clone)]
pub struct Auth(Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in &self.0 {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

type Grpc = SparkConnectServiceClient<InterceptedService<Channel, Auth>>;

/// A connection to one Spark Connect server, shared by the chunks of a run.
#[derive(Clone)]
pub struct Spark {
    grpc: Grpc,
    user: pb::UserContext,
    endpoint: String,
}

impl std::fmt::Debug for Spark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Spark")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Spark {
    /// Connects over HTTP/2, with TLS (the system's root certificates) when
    /// the URL says `use_ssl=true` or carries a token.
    pub async fn connect(spec: &SparkSpec) -> Result<Spark, SparkError> {
        let endpoint = spec.shown.clone();
        let scheme = if spec.use_ssl { "https" } else { "http" };
        let bad = |e: tonic::transport::Error| SparkError::Connect {
            endpoint: endpoint.clone(),
            message: backfill_core::error_chain(&e),
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}:{}", spec.host, spec.port))
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if spec.use_ssl {
            ep = ep
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .with_native_roots()
                        .domain_name(spec.host.clone()),
                )
                .map_err(bad)?;
        }
        let channel = ep.connect().await.map_err(|e| SparkError::Connect {
            endpoint: endpoint.clone(),
            message: backfill_core::error_chain(&e),
        })?;
        let mut headers = Vec::new();
        if let Some(t) = &spec.token {
            let v = MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                SparkError::Protocol("the token holds characters a header cannot carry".into())
            })?;
            headers.push((MetadataKey::from_static("authorization"), v));
        }
        for (k, v) in &spec.headers {
            let key = MetadataKey::from_bytes(k.as_bytes())
                .map_err(|_| SparkError::Protocol(format!("\"{k}\" is not a header name")))?;
            let value = MetadataValue::try_from(v.as_str()).map_err(|_| {
                SparkError::Protocol(format!(
                    "the value of URL parameter \"{k}\" is not a header value"
                ))
            })?;
            headers.push((key, value));
        }
        let grpc = SparkConnectServiceClient::with_interceptor(channel, Auth(headers))
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let user_id = spec
            .user_id
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "backfill".to_string());
        Ok(Spark {
            grpc,
            user: pb::UserContext {
                user_name: user_id.clone(),
                user_id,
                extensions: Vec::new(),
            },
            endpoint,
        })
    }

    /// A new server-side session (temporary views and caches are per session).
    pub fn session(&self) -> Session {
        Session {
            spark: self.clone(),
            id: uuid::Uuid::new_v4().to_string(),
            server_side: None,
        }
    }
}

/// One Spark session. Release it with [`Session::release`]; a session that
/// is never released expires on the server.
pub struct Session {
    spark: Spark,
    id: String,
    server_side: Option<String>,
}

impl Session {
    pub async fn set_conf(&mut self, pairs: &[(String, String)]) -> Result<(), SparkError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let req = pb::ConfigRequest {
            session_id: self.id.clone(),
            client_observed_server_side_session_id: self.server_side.clone(),
            user_context: Some(self.spark.user.clone()),
            operation: Some(pb::config_request::Operation {
                op_type: Some(pb::config_request::operation::OpType::Set(
                    pb::config_request::Set {
                        pairs: pairs
                            .iter()
                            .map(|(k, v)| pb::KeyValue {
                                key: k.clone(),
                                value: Some(v.clone()),
                            })
                            .collect(),
                        silent: None,
                    },
                )),
            }),
            client_type: Some(CLIENT_TYPE.to_string()),
        };
        let resp = self
            .spark
            .grpc
            .clone()
            .config(req)
            .await
            .map_err(SparkError::from_status)?
            .into_inner();
        self.observe(&resp.server_side_session_id);
        Ok(())
    }

    fn observe(&mut self, server_side: &str) {
        if !server_side.is_empty() {
            self.server_side = Some(server_side.to_string());
        }
    }

    /// Runs a plan to its end, collecting Arrow batches (progress and other
    /// messages are skipped).
    async fn execute(&mut self, plan: pb::Plan) -> Result<Vec<RecordBatch>, SparkError> {
        let req = pb::ExecutePlanRequest {
            session_id: self.id.clone(),
            client_observed_server_side_session_id: self.server_side.clone(),
            user_context: Some(self.spark.user.clone()),
            operation_id: Some(uuid::Uuid::new_v4().to_string()),
            plan: Some(plan),
            client_type: Some(CLIENT_TYPE.to_string()),
            request_options: Vec::new(),
            tags: vec!["backfill".to_string()],
        };
        let mut stream = self
            .spark
            .grpc
            .clone()
            .execute_plan(req)
            .await
            .map_err(SparkError::from_status)?
            .into_inner();
        let mut batches = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(SparkError::from_status)?;
            self.observe(&msg.server_side_session_id);
            if let Some(pb::execute_plan_response::ResponseType::ArrowBatch(b)) = msg.response_type
            {
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.data), None)?;
                for batch in reader {
                    batches.push(batch?);
                }
            }
        }
        Ok(batches)
    }

    /// Runs a SQL statement for its effect (DDL, CACHE TABLE, SET ...).
    pub async fn command(&mut self, sql: &str) -> Result<(), SparkError> {
        let plan = command_plan(pb::command::CommandType::SqlCommand(pb::SqlCommand {
            input: Some(sql_relation(sql)),
            ..Default::default()
        }));
        self.execute(plan).await.map(|_| ())
    }

    /// Runs a query and returns its rows (for small results: counts, schemas).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>, SparkError> {
        self.execute(pb::Plan {
            op_type: Some(pb::plan::OpType::Root(sql_relation(sql))),
        })
        .await
    }

    /// The Arrow schema of a query's result, without running it.
    pub async fn schema_of(
        &mut self,
        sql: &str,
    ) -> Result<arrow::datatypes::SchemaRef, SparkError> {
        let batches = self
            .query(&format!("SELECT * FROM ({sql}) AS __bf_q LIMIT 0"))
            .await?;
        batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| SparkError::Protocol("no schema came back for an empty result".into()))
    }

    /// Writes a query's rows, minus `drop` columns, as Parquet files under
    /// `path` (replacing what is there).
    pub async fn write_parquet(
        &mut self,
        sql: &str,
        drop: &[&str],
        path: &str,
        options: HashMap<String, String>,
    ) -> Result<(), SparkError> {
        let mut input = sql_relation(sql);
        if !drop.is_empty() {
            input = pb::Relation {
                common: None,
                rel_type: Some(pb::relation::RelType::Drop(Box::new(pb::Drop {
                    input: Some(Box::new(input)),
                    columns: Vec::new(),
                    column_names: drop.iter().map(|c| c.to_string()).collect(),
                }))),
            };
        }
        let write = pb::WriteOperation {
            input: Some(input),
            source: Some("parquet".to_string()),
            mode: pb::write_operation::SaveMode::Overwrite as i32,
            options,
            save_type: Some(pb::write_operation::SaveType::Path(path.to_string())),
            ..Default::default()
        };
        self.execute(command_plan(pb::command::CommandType::WriteOperation(
            write,
        )))
        .await
        .map(|_| ())
    }

    /// Ends the session on the server, dropping its views and caches.
    pub async fn release(self) {
        let req = pb::ReleaseSessionRequest {
            session_id: self.id.clone(),
            user_context: Some(self.spark.user.clone()),
            client_type: Some(CLIENT_TYPE.to_string()),
            allow_reconnect: false,
        };
        let mut grpc = self.spark.grpc.clone();
        if let Err(e) =
            tokio::time::timeout(Duration::from_secs(10), grpc.release_session(req)).await
        {
            tracing::debug!("releasing Spark session {}: {e}", self.id);
        }
    }
}

fn sql_relation(sql: &str) -> pb::Relation {
    pb::Relation {
        common: None,
        rel_type: Some(pb::relation::RelType::Sql(pb::Sql {
            query: sql.to_string(),
            ..Default::default()
        })),
    }
}

fn command_plan(command: pb::command::CommandType) -> pb::Plan {
    pb::Plan {
        op_type: Some(pb::plan::OpType::Command(pb::Command {
            command_type: Some(command),
        })),
    }
}
