//! Connection strings, as libpq writes them (`postgres://user:pw@host/db?k=v`
//! or `host=db user=bob`): where their passwords are, to mask them, and the
//! TLS settings libpq reads from them that tokio-postgres does not.

/// A URL's parts around its password: (`postgres://user`, password, `@host/db`).
fn url_parts(url: &str) -> Option<(&str, &str, &str)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let scheme = url.len() - rest.len();
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    // The userinfo ends at the last '@' of the authority.
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((&url[..scheme + colon], &rest[colon + 1..at], &rest[at..]))
}

/// Splits a libpq `key=value` string into its pairs, with each value's
/// byte range in `conn`: values may be single-quoted, with `\'` and `\\`
/// escapes, and hold spaces.
fn key_values(conn: &str) -> Vec<(&str, std::ops::Range<usize>)> {
    let b = conn.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let k = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conn[k..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let v = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        out.push((key, v..i));
    }
    out
}

/// The query parameters of a URL, with each value's byte range in `url`.
fn query_values(url: &str) -> Vec<(&str, std::ops::Range<usize>)> {
    let Some(q) = url.find('?') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = q + 1;
    for pair in url[q + 1..].split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            let start = at + k.len() + 1;
            out.push((k, start..start + v.len()));
        }
        at += pair.len() + 1;
    }
    out
}

/// Byte ranges of the passwords in a connection string: the URL's userinfo
/// password, a `password` query parameter, or a `password=` pair.
fn password_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let is_password = |k: &str| k.eq_ignore_ascii_case("password");
    let mut out = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Some((before, password, _)) = url_parts(url) {
            let start = before.len() + 1;
            out.push(start..start + password.len());
        }
        out.extend(
            query_values(url)
                .into_iter()
                .filter(|(k, _)| is_password(k))
                .map(|(_, r)| r),
        );
    } else {
        out.extend(
            key_values(url)
                .into_iter()
                .filter(|(k, _)| is_password(k))
                .map(|(_, r)| r),
        );
    }
    out.retain(|r| !r.is_empty());
    out
}

/// The URL with its passwords replaced by `***`, for messages. Handles
/// `postgres://user:pass@host/db?password=…` and `key=value` strings.
pub fn mask_url(url: &str) -> String {
    let mut out = url.to_string();
    let mut ranges = password_ranges(url);
    ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
    for r in ranges {
        out.replace_range(r, "***");
    }
    out
}

/// The passwords inside a URL, to redact them from every output even when
/// written into the job file literally: each as written, unquoted and
/// percent-decoded (libpq decodes them, and an error may show either).
pub fn url_passwords(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in password_ranges(url) {
        let raw = &url[r];
        out.push(raw.to_string());
        if let Some(inner) = raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            out.push(inner.replace("\\'", "'").replace("\\\\", "\\"));
        }
        if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
            out.push(decoded.into_owned());
        }
    }
    out.sort();
    out.dedup();
    out.retain(|p| !p.is_empty());
    out
}

/// libpq's `sslmode`: how hard to insist on TLS and what to check of the
/// server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; no certificate check
    /// (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; no certificate check unless `sslrootcert` is given
    /// (then as `VerifyCa`, as libpq does).
    Require,
    /// TLS, and the certificate chains to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of a connection string, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted CAs, or `system` for the
    /// operating system's roots.
    pub root_cert: Option<String>,
    /// `sslcert` and `sslkey`: a client certificate and its key (PEM), for
    /// servers that authenticate clients by certificate.
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl PgTls {
    /// What is checked of the server's certificate: libpq's `require` with
    /// a root certificate given checks the chain.
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.root_cert.is_some() => SslMode::VerifyCa,
            m => m,
        }
    }
}

/// The keys [`split_tls`] takes out of a connection string.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes libpq's TLS settings out of a connection string, leaving the rest
/// for tokio-postgres (which knows `sslmode` only up to `require`, and no
/// certificate files). A bad `sslmode` is an error naming what is allowed.
pub fn split_tls(url: &str) -> Result<(String, PgTls), String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if is_url {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if TLS_KEYS.contains(&k) {
                        let v = percent_encoding::percent_decode_str(v)
                            .decode_utf8()
                            .map_err(|_| format!("{k} is not valid UTF-8 once decoded"))?;
                        found.push((k.to_string(), v.into_owned()));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut out = url.to_string();
        let mut cut = Vec::new();
        for (k, r) in key_values(url) {
            if TLS_KEYS.contains(&k) {
                let raw = &url[r.clone()];
                let v = match raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                    Some(inner) => inner.replace("\\'", "'").replace("\\\\", "\\"),
                    None => raw.to_string(),
                };
                found.push((k.to_string(), v));
                let start = k.as_ptr() as usize - url.as_ptr() as usize;
                cut.push(start..r.end);
            }
        }
        for r in cut.into_iter().rev() {
            out.replace_range(r, "");
        }
        out
    };
    let mut tls = PgTls::default();
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => {
                tls.mode = match v.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode \"{other}\" is not supported (expected disable, prefer, \
                             require, verify-ca or verify-full)"
                        ));
                    }
                }
            }
            "sslrootcert" => tls.root_cert = Some(v),
            "sslcert" => tls.cert = Some(v),
            _ => tls.key = Some(v),
        }
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err("sslcert and sslkey go together (a client certificate and its key)".into());
    }
    if tls.mode == SslMode::Disable && (tls.root_cert.is_some() || tls.cert.is_some()) {
        return Err("sslmode=disable with certificate files: choose one".into());
    }
    Ok((rest, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://bob:s3cr@t@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(mask_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            mask_url("host=db user=bob password=hunter2 dbname=x"),
            "host=db user=bob password=*** dbname=x"
        );
        assert_eq!(url_passwords("postgres://bob:s3cr@t@db:5432/x"), ["s3cr@t"]);
        assert!(url_passwords("postgres://db/x").is_empty());
        // In the query, percent-encoded, and quoted with spaces.
        assert_eq!(
            mask_url("postgres://bob@db/x?sslmode=require&password=p%40ss&application_name=a"),
            "postgres://bob@db/x?sslmode=require&password=***&application_name=a"
        );
        assert_eq!(
            url_passwords("postgres://bob@db/x?password=p%40ss"),
            ["p%40ss", "p@ss"]
        );
        assert_eq!(
            mask_url("host=db password='a b\\'c' user=bob"),
            "host=db password=*** user=bob"
        );
        assert_eq!(
            url_passwords("host=db password='a b\\'c' user=bob"),
            ["'a b\\'c'", "a b'c"]
        );
        assert_eq!(
            mask_url("host=db password = hunter2"),
            "host=db password = ***"
        );
    }

    #[test]
    fn tls_settings_come_out_of_both_forms() {
        let (rest, tls) = split_tls(
            "postgres://u:p@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db/x?application_name=a");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) =
            split_tls("host=db sslmode=require sslrootcert='/a b/ca.pem' user=u").unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=db", "user=u"]
        );
        assert_eq!(tls.effective_mode(), SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/a b/ca.pem"));
        let (rest, tls) = split_tls("postgres://db/x?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(split_tls("postgres://db/x").unwrap().1, PgTls::default());
        assert!(
            split_tls("postgres://db/x?sslmode=allow")
                .unwrap_err()
                .contains("verify-full")
        );
        assert!(
            split_tls("postgres://db/x?sslcert=/c.pem")
                .unwrap_err()
                .contains("sslkey")
        );
    }
}
