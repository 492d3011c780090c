//! The URI form of connection strings:
//! `postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]`
//! (PostgreSQL documentation, "Connection URIs"; `conninfo_uri_parse_options`
//! in `src/interfaces/libpq/fe-connect.c`). Components are percent-decoded,
//! so a socket directory can be given as the host `%2Fvar%2Frun%2Fpostgresql`.

use crate::error::Error;

/// Decodes `%XX` escapes (no `+` to space, as libpq).
fn decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config(format!("invalid percent-encoded token: {s:?}")))?;
            if hex == 0 {
                return Err(Error::config(format!(
                    "forbidden value %00 in percent-encoded value: {s:?}"
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("URI component is not UTF-8: {s:?}")))
}

/// Splits a URI into libpq key/value pairs.
pub(crate) fn parse_uri(uri: &str) -> Result<Vec<(String, String)>, Error> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(|| Error::config("invalid URI prefix"))?;
    let mut out = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = match before_query.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (before_query, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_owned(), decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".to_owned(), decode(p)?));
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(Error::config("multiple hosts are not supported"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| {
            Error::config(format!(
                "missing \"]\" in IPv6 host address in URI: {uri:?}"
            ))
        })?;
        if h.is_empty() {
            return Err(Error::config(format!(
                "IPv6 host address may not be empty in URI: {uri:?}"
            )));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                Error::config(format!(
                    "unexpected character after IPv6 host address in URI: {uri:?}"
                ))
            })?),
        };
        (h, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".to_owned(), decode(host)?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".to_owned(), decode(p)?));
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        out.push(("dbname".to_owned(), decode(d)?));
    }
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').ok_or_else(|| {
            Error::config(format!(
                "missing key/value separator \"=\" in URI query parameter: {param:?}"
            ))
        })?;
        let (k, v) = (decode(k)?, decode(v)?);
        // libpq maps the JDBC-style `ssl=true` to `sslmode=require`.
        if k == "ssl" && v == "true" {
            out.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            out.push((k, v));
        }
    }
    Ok(out)
}
