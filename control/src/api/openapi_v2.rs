//! `/openapi/v2` in the protobuf form client-go insists on (gnostic's `openapi_v2.Document`).
//!
//! Older kubectl (1.27) downloads this document before every `apply` and decides from it whether
//! the server validates fields itself: a PATCH operation carrying the
//! `x-kubernetes-group-version-kind` extension and a `fieldValidation` query parameter. So the
//! document lists exactly that for every served kind; it carries no schemas, which makes kubectl
//! fall back to its compiled-in types for strategic merge patches (the right patch strategies).
//! The protobuf is written by hand: four message types, a few fields each.

use super::registry::Registry;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (strings and embedded messages).
fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn message(fields: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, b) in fields {
        field(&mut out, *n, b);
    }
    out
}

fn s(v: &str) -> Vec<u8> {
    v.as_bytes().to_vec()
}

fn query_param(name: &str) -> Vec<u8> {
    // QueryParameterSubSchema{in=2, name=4, type=6} in NonBodyParameter{3} in Parameter{2} in ParametersItem{1}
    let sub = message(&[(2, s("query")), (4, s(name)), (6, s("string"))]);
    let non_body = message(&[(3, sub)]);
    let parameter = message(&[(2, non_body)]);
    message(&[(1, parameter)])
}

fn gvk_extension(group: &str, version: &str, kind: &str) -> Vec<u8> {
    let yaml = format!("group: \"{group}\"\nkind: \"{kind}\"\nversion: \"{version}\"\n");
    let any = message(&[(2, s(&yaml))]);
    message(&[(1, s("x-kubernetes-group-version-kind")), (2, any)])
}

pub fn document(reg: &Registry) -> Vec<u8> {
    let mut paths = Vec::new();
    for served in reg.all() {
        let d = &served.def;
        let base = if d.group.is_empty() {
            format!("/api/{}", d.version)
        } else {
            format!("/apis/{}/{}", d.group, d.version)
        };
        let path = if d.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{base}/{}/{{name}}", d.plural)
        };
        let mut op = Vec::new();
        field(&mut op, 5, format!("patch{}", d.kind).as_bytes());
        for p in ["dryRun", "fieldManager", "fieldValidation", "force"] {
            field(&mut op, 8, &query_param(p));
        }
        field(&mut op, 13, &gvk_extension(&d.group, &d.version, &d.kind));
        let item = message(&[(8, op)]);
        let named = message(&[(1, s(&path)), (2, item)]);
        field(&mut paths, 2, &named);
    }
    let info = message(&[(1, s("Kubernetes")), (2, s("v1.33.0"))]);
    message(&[(1, s("2.0")), (2, info), (8, paths)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_varints_and_fields() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        assert_eq!(message(&[(1, s("2.0"))]), [0x0a, 3, b'2', b'.', b'0']);
        let doc = document(&Registry::with_builtins());
        assert!(doc.starts_with(&[0x0a, 3, b'2', b'.', b'0']));
        assert!(doc.windows(15).any(|w| w == b"fieldValidation"));
    }
}
