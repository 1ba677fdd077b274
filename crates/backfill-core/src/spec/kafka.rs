//! `[source] format = "kafka"`: a topic replayed by offset windows.

use super::*;

/// How an event's value becomes columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaValue {
    /// A JSON object per event: its fields become columns.
    Json,
    /// UTF-8 text, as column `value`.
    String,
    /// The raw bytes, as column `value`.
    Bytes,
}

impl KafkaValue {
    pub fn name(self) -> &'static str {
        match self {
            KafkaValue::Json => "json",
            KafkaValue::String => "string",
            KafkaValue::Bytes => "bytes",
        }
    }
}

/// `sasl_mechanism`, with the credentials it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaSasl {
    Plain { username: String, password: String },
    ScramSha256 { username: String, password: String },
    ScramSha512 { username: String, password: String },
}

/// TLS to the brokers (`tls = true`, or any `tls_*` key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaTls {
    /// PEM file of the CAs to trust; the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for clusters that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceSpec {
    /// `host:port` of the bootstrap brokers.
    pub brokers: Vec<String>,
    pub topic: String,
    /// The partitions to read; all of the topic's when empty.
    pub partitions: Vec<i32>,
    pub value: KafkaValue,
    pub sasl: Option<KafkaSasl>,
    pub tls: Option<KafkaTls>,
    /// `out_of_order`, for `[range] column = "_timestamp"`: how much
    /// older, in milliseconds, an event may be than one before it in its
    /// partition (producers' clocks, retries). A time chunk reads from
    /// where the events pass its start less this, to where they pass its
    /// end plus this, and keeps the rows inside it.
    pub out_of_order_ms: i64,
}

/// The columns every Kafka row carries besides its value's.
pub const KAFKA_PARTITION: &str = "_partition";
pub const KAFKA_OFFSET: &str = "_offset";
pub const KAFKA_TIMESTAMP: &str = "_timestamp";
pub const KAFKA_KEY: &str = "_key";
/// Why an event's value did not decode (NULL when it did): such rows fail
/// the built-in rule `decode` and go to the quarantine.
pub const KAFKA_DECODE_ERROR: &str = "_decode_error";

pub(super) fn read_source(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    p: &str,
) -> Option<KafkaSourceSpec> {
    let key = |k: &str| format!("{p}.{k}");
    let brokers = t.strings(d, env, "brokers");
    let topic = t.string(d, env, "topic");
    let partitions_raw = t.raw("partitions");
    let value = t.string(d, env, "value");
    let mechanism = t.string(d, env, "sasl_mechanism");
    let username = t.string(d, env, "sasl_username");
    let password = t.string(d, env, "sasl_password");
    let tls = t.bool(d, "tls");
    let tls_ca = t.string(d, env, "tls_ca");
    let tls_cert = t.string(d, env, "tls_cert");
    let tls_key = t.string(d, env, "tls_key");
    let out_of_order = t.string(d, env, "out_of_order");
    let brokers = match brokers {
        Some(b) if b.is_empty() => {
            d.push(t.span(), &key("brokers"), "must name at least one broker");
            None
        }
        Some(b) => {
            let mut ok = true;
            for broker in &b {
                let fine = broker
                    .value
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !fine {
                    d.push(
                        broker.span.clone(),
                        &key("brokers"),
                        format!("\"{}\" is not host:port", broker.shown),
                    );
                    ok = false;
                }
            }
            ok.then(|| b.into_iter().map(|b| b.value).collect::<Vec<_>>())
        }
        None => {
            if !t.has("brokers") {
                d.push(
                    t.span(),
                    &key("brokers"),
                    "missing (e.g. [\"broker1:9092\"])",
                );
            }
            None
        }
    };
    let topic = match topic {
        Some(tp) if tp.value.trim().is_empty() => {
            d.push(tp.span, &key("topic"), "must not be empty");
            None
        }
        Some(tp) => Some(tp.value),
        None => {
            if !t.has("topic") {
                d.push(t.span(), &key("topic"), "missing");
            }
            None
        }
    };
    let partitions = match partitions_raw {
        None => Some(Vec::new()),
        Some(raw) => {
            let parsed: Option<Vec<i32>> = match raw.get_ref() {
                DeValue::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|v| match reader::int_value(v.get_ref()) {
                        Some(Ok(i)) => i32::try_from(i).ok().filter(|i| *i >= 0),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            match parsed {
                Some(mut v) => {
                    v.sort_unstable();
                    v.dedup();
                    Some(v)
                }
                None => {
                    d.push(
                        raw.span(),
                        &key("partitions"),
                        "must be a non-empty list of partition numbers, e.g. [0, 1]",
                    );
                    None
                }
            }
        }
    };
    let value = match value {
        None => Some(KafkaValue::Json),
        Some(v) => match v.value.to_ascii_lowercase().as_str() {
            "json" => Some(KafkaValue::Json),
            "string" | "text" => Some(KafkaValue::String),
            "bytes" | "binary" => Some(KafkaValue::Bytes),
            _ => {
                d.push(
                    v.span,
                    &key("value"),
                    format!(
                        "\"{}\" is not a value format (expected json, string or bytes)",
                        v.shown
                    ),
                );
                None
            }
        },
    };
    let sasl = match (mechanism, username, password) {
        (None, None, None) => Some(None),
        (Some(m), Some(u), Some(pw)) => {
            // A password written into the file is as secret as one from
            // the environment.
            d.secrets.push(pw.value.clone());
            let (username, password) = (u.value, pw.value);
            match m.value.to_ascii_uppercase().replace('_', "-").as_str() {
                "PLAIN" => Some(Some(KafkaSasl::Plain { username, password })),
                "SCRAM-SHA-256" => Some(Some(KafkaSasl::ScramSha256 { username, password })),
                "SCRAM-SHA-512" => Some(Some(KafkaSasl::ScramSha512 { username, password })),
                _ => {
                    d.push(
                        m.span,
                        &key("sasl_mechanism"),
                        format!(
                            "\"{}\" is not a SASL mechanism (expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                            m.shown
                        ),
                    );
                    None
                }
            }
        }
        (m, u, pw) => {
            let missing: Vec<&str> = [
                ("sasl_mechanism", m.is_none()),
                ("sasl_username", u.is_none()),
                ("sasl_password", pw.is_none()),
            ]
            .iter()
            .filter(|(_, gone)| *gone)
            .map(|(k, _)| *k)
            .collect();
            d.push(
                t.span(),
                &key(missing[0]),
                format!(
                    "SASL needs sasl_mechanism, sasl_username and sasl_password together; missing {}",
                    missing.join(", ")
                ),
            );
            None
        }
    };
    let path = |v: Option<Located<String>>| v.map(|v| PathBuf::from(v.value));
    let any_tls_file = tls_ca.is_some() || tls_cert.is_some() || tls_key.is_some();
    if tls_cert.is_some() != tls_key.is_some() {
        d.push(
            t.span(),
            &key("tls_cert"),
            "a client certificate needs both tls_cert and tls_key",
        );
    }
    let tls = if tls == Some(false) {
        if any_tls_file {
            d.push(
                t.span(),
                &key("tls"),
                "tls = false, but tls_ca, tls_cert or tls_key is set",
            );
        }
        None
    } else if tls == Some(true) || any_tls_file {
        Some(KafkaTls {
            ca: path(tls_ca),
            cert: path(tls_cert),
            key: path(tls_key),
        })
    } else {
        None
    };
    let out_of_order_ms = match out_of_order {
        None => Some(0),
        Some(o) => match crate::interval::parse_duration(&o.value) {
            Ok(dur) => Some(dur.as_millis().min(i64::MAX as u128) as i64),
            Err(e) => {
                d.push(o.span, &key("out_of_order"), e.replace(&o.value, &o.shown));
                None
            }
        },
    };
    Some(KafkaSourceSpec {
        brokers: brokers?,
        topic: topic?,
        partitions: partitions?,
        value: value?,
        sasl: sasl?,
        tls,
        out_of_order_ms: out_of_order_ms?,
    })
}

/// The keys a Kafka `[source]` reads besides `format` and `columns`.
pub(super) const KEYS: [&str; 12] = [
    "brokers",
    "topic",
    "partitions",
    "value",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "out_of_order",
];
