//! `[engine]`: where a chunk's heavy work runs.

use std::path::{Path, PathBuf};

use super::reader::{Diags, Env, TableReader};
use super::{Loc, loc, resolve_location};

/// Which engine executes chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Spark cluster through Spark Connect.
    Spark,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineSpec {
    pub kind: EngineKind,
    /// Set exactly when `kind = "spark"`.
    pub spark: Option<SparkSpec>,
}

/// `[engine] kind = "spark"`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkSpec {
    pub host: String,
    pub port: u16,
    /// `;use_ssl=true` in the URL (implied by a token, as in PySpark).
    pub use_ssl: bool,
    /// The bearer token (`;token=` in the URL or `token = "${ENV}"`): never print it.
    pub token: Option<String>,
    /// `;user_id=` in the URL; the user running backfill otherwise.
    pub user_id: Option<String>,
    /// Other `;key=value` URL parameters, sent as gRPC headers (e.g.
    /// `x-databricks-cluster-id`), as Spark Connect's URL format defines.
    pub headers: Vec<(String, String)>,
    /// `sc://host:port`, without parameters, for messages.
    pub shown: String,
    /// Spark SQL settings for every session (`conf = { ... }`).
    pub conf: Vec<(String, String)>,
    /// Where Spark writes chunk output before backfill publishes it: a path
    /// both backfill and Spark's executors can reach.
    pub staging: PathBuf,
    pub staging_shown: String,
    pub loc: Loc,
}

/// A parsed `sc://host:port/;key=value;...` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectUrl {
    pub host: String,
    pub port: u16,
    pub params: Vec<(String, String)>,
}

/// Parses a Spark Connect URL. Errors never quote parameter values, which
/// may hold a token.
pub fn parse_connect_url(url: &str) -> Result<ConnectUrl, String> {
    let rest = url
        .strip_prefix("sc://")
        .ok_or_else(|| "must start with sc:// (e.g. \"sc://spark-host:15002\")".to_string())?;
    let (hostport, params) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("port \"{p}\" is not a number from 1 to 65535"))?;
            (h.to_string(), port)
        }
        _ => (hostport.to_string(), 15002),
    };
    if host.is_empty() || host.contains(['@', ';', '?', '#', ' ']) {
        return Err("names no host (expected sc://host:port)".to_string());
    }
    let mut out = Vec::new();
    for p in params.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| "parameters are ;key=value pairs".to_string())?;
        let k = k.trim().to_ascii_lowercase();
        let header_safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !header_safe(&k) {
            return Err(format!(
                "parameter name \"{k}\" is not a header name (letters, digits, - _ .)"
            ));
        }
        out.push((k, v.to_string()));
    }
    Ok(ConnectUrl {
        host,
        port,
        params: out,
    })
}

pub(super) fn read_engine(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    text: &str,
) -> Option<EngineSpec> {
    let kind = t.string(d, env, "kind");
    let remote = t.string(d, env, "remote");
    let token = t.string(d, env, "token");
    let staging = t.string(d, env, "staging");
    let conf = t.table(d, "conf");
    t.finish(d, &["kind", "remote", "token", "staging", "conf"]);
    let kind = match kind {
        None => EngineKind::Local,
        Some(k) => match k.value.to_ascii_lowercase().as_str() {
            "local" | "datafusion" => EngineKind::Local,
            "spark" => EngineKind::Spark,
            _ => {
                d.push(
                    k.span,
                    "engine.kind",
                    format!("\"{}\" is not an engine (expected local or spark)", k.shown),
                );
                return None;
            }
        },
    };
    let mut pairs = Vec::new();
    if let Some(mut c) = conf {
        for key in c.entry_names() {
            if let Some(v) = c.string(d, env, &key) {
                pairs.push((key, v.value));
            }
        }
        c.finish(d, &[]);
    }
    if kind == EngineKind::Local {
        for (name, given) in [
            ("remote", remote.is_some()),
            ("token", token.is_some()),
            ("staging", staging.is_some()),
            ("conf", !pairs.is_empty()),
        ] {
            if given {
                d.push(
                    t.raw_span(name).unwrap_or_else(|| t.span()),
                    &format!("engine.{name}"),
                    "only applies with kind = \"spark\"",
                );
            }
        }
        return Some(EngineSpec::default());
    }
    let Some(remote) = remote else {
        d.push(
            t.span(),
            "engine.remote",
            "missing (the Spark Connect URL, e.g. \"sc://spark-host:15002\")",
        );
        return None;
    };
    let url = match parse_connect_url(&remote.value) {
        Ok(u) => u,
        Err(e) => {
            d.push(remote.span, "engine.remote", e);
            return None;
        }
    };
    let param = |k: &str| {
        url.params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let token = token.map(|t| t.value).or_else(|| param("token"));
    if let Some(tk) = &token {
        d.secrets.push(tk.clone());
    }
    let use_ssl = match param("use_ssl") {
        Some(v) => v.eq_ignore_ascii_case("true"),
        None => token.is_some(),
    };
    let (staging, staging_shown) = match staging {
        Some(s) => match resolve_location(base, &s.value) {
            Ok((_, Some(_))) => {
                d.push(
                    s.span,
                    "engine.staging",
                    "must be a path that backfill and Spark's executors both reach (a shared mount); object-store staging is not supported yet",
                );
                return None;
            }
            Ok((p, None)) => (p, s.shown),
            Err(e) => {
                d.push(s.span, "engine.staging", e);
                return None;
            }
        },
        None => (
            base.join(".backfill/spark-staging"),
            ".backfill/spark-staging".to_string(),
        ),
    };
    Some(EngineSpec {
        kind,
        spark: Some(SparkSpec {
            shown: format!("sc://{}:{}", url.host, url.port),
            host: url.host.clone(),
            port: url.port,
            use_ssl,
            token,
            user_id: param("user_id"),
            headers: url
                .params
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "token" | "user_id" | "use_ssl" | "user_agent" | "session_id"
                    )
                })
                .cloned()
                .collect(),
            conf: pairs,
            staging,
            staging_shown,
            loc: loc(text, &remote.span),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_urls() {
        let u = parse_connect_url("sc://spark-host:15003/;token=abc;user_id=me").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("spark-host", 15003));
        assert_eq!(u.params.len(), 2);
        let u = parse_connect_url("sc://localhost").unwrap();
        assert_eq!(u.port, 15002);
        assert!(parse_connect_url("http://x:1").is_err());
        assert!(parse_connect_url("sc://x:port").is_err());
        assert!(parse_connect_url("sc://:15002").is_err());
        let e = parse_connect_url("sc://h/;bad name=hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let u = parse_connect_url("sc://h:443/;x-databricks-cluster-id=0123").unwrap();
        assert_eq!(
            u.params,
            vec![("x-databricks-cluster-id".into(), "0123".into())]
        );
    }
}
