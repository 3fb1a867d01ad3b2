//! Fuzz targets for the CNI parsers: the network configuration a runtime writes to the plugin's
//! stdin (with the `prevResult` a chained plugin before it wrote) and the results read back.
//! `fuzz/` runs them under libfuzzer and `tests/fuzz_props.rs` on stable; both panic when a
//! property fails, not only when the parser does.

use serde_json::{Value, json};

use super::{CniError, CniResult, NetConf, SUPPORTED, code};

/// The codes a config may be refused with (spec section "Error codes").
const CONFIG_CODES: [u32; 3] = [code::INCOMPATIBLE_VERSION, code::DECODE, code::INVALID_CONFIG];

fn check_error(e: &CniError) {
    assert!(
        CONFIG_CODES.contains(&e.code),
        "a config refused with code {}: {e}",
        e.code
    );
    assert!(!e.msg.is_empty());
    let v = e.to_json("1.1.0");
    assert_eq!(v["code"], json!(e.code));
    assert!(v["msg"].is_string());
}

/// A result read back is the result written, in every version the plugin writes.
fn check_result(prev: &Value) {
    let Ok(result) = CniResult::from_value(prev) else {
        return;
    };
    for version in SUPPORTED {
        let written = result.to_json(version);
        assert_eq!(written["cniVersion"], version);
        let back = CniResult::from_value(&written)
            .unwrap_or_else(|e| panic!("a result written as {version} does not read back: {e}: {written}"));
        assert_eq!(back, result, "{version}");
    }
}

/// A config: it decodes and validates, or is refused with one of the spec's config codes; one
/// that validates speaks a supported version, has a valid name and MTU, and a parent where its
/// mode needs one, and its `prevResult` reads back as written.
fn check_config(bytes: &[u8]) {
    match NetConf::parse(bytes) {
        Err(e) => check_error(&e),
        Ok(conf) => {
            assert!(SUPPORTED.contains(&conf.cni_version.as_str()));
            assert!(super::valid_name(&conf.name), "name {:?}", conf.name);
            assert!(conf.mtu.is_none_or(|m| (68..=65535).contains(&m)));
            assert!(!conf.mode.has_parent() || conf.parent.as_deref().is_some_and(|p| !p.is_empty()));
            assert!(conf.at_least("0.4.0"));
            if let Some(prev) = &conf.prev_result {
                check_result(prev);
            }
        }
    }
}

/// The raw bytes of a config.
pub fn config(data: &[u8]) {
    check_config(data);
}

/// Reads an input as a stream of choices; past its end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn value(&mut self, from: &[Value]) -> Value {
        from[self.below(from.len())].clone()
    }
}

/// A `prevResult` from choices: interfaces, addresses (v4, v6, bad), routes and DNS.
fn prev_result(c: &mut Choices<'_>) -> Value {
    let addresses = [
        json!("10.0.0.2/32"),
        json!("fd00::2/128"),
        json!("10.0.0.2"),
        json!("10.0.0.2/33"),
        json!(7),
        json!("::/0"),
    ];
    let mut ips = Vec::new();
    for _ in 0..c.below(3) {
        let mut ip = json!({"address": c.value(&addresses)});
        match c.below(4) {
            0 => ip["gateway"] = c.value(&[json!("169.254.1.1"), json!("fe80::1"), json!("x")]),
            1 => {
                ip["interface"] = c.value(&[
                    json!(0),
                    json!(1),
                    json!(-1),
                    json!(18446744073709551615u64),
                    json!("0"),
                ])
            }
            2 => ip["version"] = c.value(&[json!("4"), json!("6")]),
            _ => {}
        }
        ips.push(ip);
    }
    let interfaces: Vec<Value> = (0..c.below(3)).map(|i| json!({"name": format!("eth{i}"), "mac": c.value(&[json!(""), json!("aa:bb:cc:dd:ee:ff")]), "sandbox": "/run/netns/x"})).collect();
    let routes: Vec<Value> = (0..c.below(3)).map(|_| json!({"dst": c.value(&[json!("0.0.0.0/0"), json!("::/0"), json!("10.0.0.0/8"), json!("bad")]), "gw": c.value(&[Value::Null, json!("10.0.0.1")])})).collect();
    let mut v = json!({"cniVersion": c.value(&[json!("1.0.0"), json!("0.4.0")]), "interfaces": interfaces, "ips": ips, "routes": routes});
    if c.below(2) == 0 {
        v["dns"] = json!({"nameservers": ["10.66.0.10"], "search": ["default.svc.cluster.local"], "options": ["ndots:5"], "domain": "cluster.local"});
    }
    v
}

/// A config from choices of fields and values, each field right or wrong in type or range,
/// so that most inputs get past JSON decoding to the checks behind it.
pub fn config_fields(data: &[u8]) {
    let mut c = Choices(data);
    let mut v = json!({});
    let fields: [(&str, Vec<Value>); 14] = [
        (
            "cniVersion",
            vec![
                json!("1.1.0"),
                json!("1.0.0"),
                json!("0.4.0"),
                json!("0.3.1"),
                json!("1.1"),
                json!(1),
                json!(""),
            ],
        ),
        (
            "name",
            vec![
                json!("pods"),
                json!("-x"),
                json!(""),
                json!("a b"),
                json!("p.o_d-s"),
                json!("é"),
                json!(null),
            ],
        ),
        ("type", vec![json!("eni-cni"), json!(3)]),
        (
            "mode",
            vec![
                json!("veth"),
                json!("host"),
                json!("ipvlan"),
                json!("macvlan"),
                json!("bridge"),
                json!("VETH"),
            ],
        ),
        (
            "mtu",
            vec![
                json!(1500),
                json!(67),
                json!(68),
                json!(65535),
                json!(65536),
                json!(-1),
                json!(1e3),
                json!("1500"),
            ],
        ),
        ("parent", vec![json!("eth0"), json!(""), json!(null)]),
        ("hostIP", vec![json!("10.0.0.1"), json!("::1"), json!("10.0.0.256")]),
        ("pool", vec![json!("/run/x.sock"), json!(""), json!(1)]),
        ("clusterDNS", vec![json!("10.66.0.10"), json!("dns")]),
        ("allowNodeAccess", vec![json!(true), json!("yes")]),
        ("fastPath", vec![json!(false), json!(0)]),
        (
            "dns",
            vec![json!({"nameservers": ["1.1.1.1"]}), json!({"search": "x"}), json!([])],
        ),
        (
            "cni.dev/valid-attachments",
            vec![
                json!([{"containerID": "c", "ifname": "eth0"}]),
                json!([{"containerID": 1}]),
                json!({}),
            ],
        ),
        ("prevResult", vec![]),
    ];
    for _ in 0..1 + c.below(16) {
        let (name, values) = &fields[c.below(fields.len())];
        v[*name] = if values.is_empty() {
            prev_result(&mut c)
        } else {
            c.value(values)
        };
    }
    // Usually the three required fields, so that the rest is looked at.
    if c.below(4) != 0 {
        for (name, value) in [("cniVersion", "1.1.0"), ("name", "pods"), ("type", "eni-cni")] {
            if v.get(name).is_none() {
                v[name] = json!(value);
            }
        }
    }
    check_config(&serde_json::to_vec(&v).unwrap());
}

/// A result from choices alone: read back as written whenever it reads at all.
pub fn result(data: &[u8]) {
    let mut c = Choices(data);
    check_result(&prev_result(&mut c));
}
