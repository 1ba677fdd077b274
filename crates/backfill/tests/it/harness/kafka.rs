//! A Kafka-protocol broker for the Kafka tests: tansu, started per test on
//! a random loopback port with in-memory storage (optionally behind a TLS
//! listener), and a producing client.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

/// A tansu broker on loopback, killed on drop.
pub struct Broker {
    child: Child,
    /// The TLS listener in front of the broker, if any.
    proxy: Option<Child>,
    pub address: String,
    rt: tokio::runtime::Runtime,
    /// For producing; none on a broker that asks for a login.
    client: Option<Arc<Client>>,
}

/// Where the tansu binary is: `BACKFILL_TEST_TANSU`, which `scripts/test.sh`
/// sets after installing it (`scripts/tansu.sh`).
fn tansu() -> String {
    std::env::var("BACKFILL_TEST_TANSU").unwrap_or_else(|_| {
        panic!(
            "BACKFILL_TEST_TANSU is not set: run the suite through scripts/test.sh, which installs \
             the tansu broker (scripts/tansu.sh prints its path)"
        )
    })
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port(), &Tansu::default())
    }

    /// Stops the broker and starts an empty one at the same address: every
    /// topic is gone (its storage is in memory).
    pub fn restart(self) -> Broker {
        let port = self.port();
        drop(self);
        Broker::start_on(port, &Tansu::default())
    }

    fn port(&self) -> u16 {
        self.address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port")
    }

    pub fn start_on(port: u16, how: &Tansu) -> Broker {
        // Behind TLS, tansu listens on a port of its own and tells clients
        // to come back through the TLS listener on `port`, by the name its
        // certificate has.
        let (listen, advertised) = if how.tls {
            let inner = free_port();
            (inner, format!("tcp://localhost:{port}"))
        } else {
            (port, format!("tcp://127.0.0.1:{port}"))
        };
        let url = format!("tcp://127.0.0.1:{listen}");
        // tansu listens on 0.0.0.0 unless told: always loopback here.
        let mut cmd = Command::new(tansu());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            &how.storage,
        ]);
        if how.sasl.is_some() {
            cmd.arg("--authentication");
        }
        for (k, v) in &how.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_for(&mut child, listen, "tansu");
        let proxy = how.tls.then(|| {
            let t = crate::postgres::tls::tls_dir();
            let t = t.display();
            let mut proxy = Command::new("socat")
                .args([
                    format!(
                        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={t}/server.crt,\
                         key={t}/server.key,cafile={t}/ca.crt,verify=1"
                    ),
                    format!("TCP:127.0.0.1:{listen}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start socat (scripts/deps.sh installs it)");
            wait_for(&mut proxy, port, "socat");
            proxy
        });
        let address = if how.tls {
            format!("localhost:{port}")
        } else {
            format!("127.0.0.1:{port}")
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut builder = ClientBuilder::new(vec![address.clone()]);
        if how.tls {
            let t = crate::postgres::tls::tls_dir();
            let config = backfill::core::pgtls::verified_client_config(
                Some(&t.join("ca.crt")),
                Some((&t.join("client.crt"), &t.join("client.key"))),
            )
            .expect("client TLS config");
            builder = builder.tls_config(Arc::new(config));
        }
        if let Some((user, password)) = &how.sasl {
            builder = builder.sasl_config(rskafka::client::SaslConfig::ScramSha512(
                rskafka::client::Credentials::new(user.clone(), password.clone()),
            ));
        }
        // A broker that asks for a login gets no producing client here.
        let client = how
            .sasl
            .is_none()
            .then(|| rt.block_on(builder.build()).expect("connect to tansu"))
            .map(Arc::new);
        Broker {
            child,
            proxy,
            address,
            rt,
            client,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_deref().expect("a broker with a client")
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let controller = self.client().controller_client().expect("controller");
        self.rt
            .block_on(controller.create_topic(name, partitions, 1, 5_000))
            .expect("create topic");
    }

    fn partition(&self, topic: &str, partition: i32) -> PartitionClient {
        self.rt
            .block_on(
                self.client()
                    .partition_client(topic, partition, UnknownTopicHandling::Retry),
            )
            .expect("partition client")
    }

    /// Produces `events` to one partition in batches of `batch` (several
    /// events per record batch, as producers send them); their offsets.
    pub fn produce(&self, topic: &str, partition: i32, events: &[Event], batch: usize) -> Vec<i64> {
        let pc = self.partition(topic, partition);
        let mut offsets = Vec::new();
        for group in events.chunks(batch.max(1)) {
            let records = group
                .iter()
                .map(|e| Record {
                    key: e.key.clone().map(String::into_bytes),
                    value: e.value.clone(),
                    headers: Default::default(),
                    timestamp: chrono::DateTime::from_timestamp_millis(e.timestamp_ms)
                        .expect("timestamp"),
                })
                .collect();
            offsets.extend(
                self.rt
                    .block_on(pc.produce(records, Compression::NoCompression))
                    .expect("produce"),
            );
        }
        offsets
    }
}

/// How to start tansu: its storage, its environment, SASL (a user the
/// broker's clients log in as), and TLS in front of it.
pub struct Tansu {
    pub storage: String,
    pub env: Vec<(&'static str, String)>,
    pub sasl: Option<(String, String)>,
    pub tls: bool,
}

impl Default for Tansu {
    fn default() -> Self {
        Tansu {
            storage: "memory://tansu/".into(),
            env: Vec::new(),
            sasl: None,
            tls: false,
        }
    }
}

/// Waits until `child` listens on `port` of loopback.
fn wait_for(child: &mut Child, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.proxy.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}
