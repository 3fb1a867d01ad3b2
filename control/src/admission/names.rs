//! Name and label syntax (apimachinery's validation rules, with their messages).

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let ok = !s.is_empty() && s.chars().all(|c| alnum(c) || c == '-') && s.starts_with(alnum) && s.ends_with(alnum);
    (!ok).then(|| DNS1123_LABEL_MSG.to_string())
}

pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty() && l.chars().all(|c| alnum(c) || c == '-') && l.starts_with(alnum) && l.ends_with(alnum)
        });
    (!ok).then(|| DNS1123_SUBDOMAIN_MSG.to_string())
}

/// IANA service name: ≤ 15 characters, lowercase alphanumerics and '-', at least one letter.
pub fn port_name(s: &str) -> Option<String> {
    if s.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    if !s.chars().all(|c| alnum(c) || c == '-') {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        return Some("must not contain consecutive hyphens".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must not begin or end with a hyphen".into());
    }
    None
}

fn label_name_part(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(edge)
        && s.ends_with(edge)
}

/// Label and annotation keys: `[prefix/]name`.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() || dns1123_subdomain(p).is_some() {
            return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    (!label_name_part(name)).then(|| "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
}

pub fn label_value(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    (!label_name_part(s)).then(|| "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
}

/// Environment variable names (the apiserver accepts any printable name without '=').
pub fn env_name(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '=');
    (!ok).then(|| {
        "a valid environment variable name must consist only of printable ASCII characters other than '='".into()
    })
}

/// ConfigMap and Secret keys.
pub fn config_key(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != "..";
    (!ok).then(|| "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into())
}

/// A name that only has to be one segment of a URL path (RBAC's): not `.` or `..`, no `/` or `%`.
pub fn path_segment(name: &str) -> Option<String> {
    match name {
        "." | ".." => Some(format!("may not be '{name}'")),
        _ if name.contains('/') => Some("may not contain '/'".into()),
        _ if name.contains('%') => Some("may not contain '%'".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("Bad_Name").is_some());
        assert!(port_name("http").is_none());
        assert!(port_name("8080").is_some());
        assert!(port_name("a--b").is_some());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("bad key").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("-x").is_some());
        assert!(config_key("tls.crt").is_none());
        assert!(config_key("a/b").is_some());
    }
}
