//! How the data plane reads EndpointSlices, written once. A slice belongs to the Service its
//! `kubernetes.io/service-name` label names, in its own namespace. A Service port's endpoints
//! are the addresses of that Service's slices that have a port of the same name (empty for an
//! unnamed port) and protocol (TCP when unset), at that slice port's number: the EndpointSlice
//! controller has already resolved `targetPort`, by number or by the pod's named port, so
//! slices of one Service may carry different numbers. That is kube-proxy's reading too.
//!
//! An endpoint's conditions default as the API says: ready unless it says otherwise, serving
//! when ready, not terminating.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use nodeless_types::keys;

/// The Service a slice belongs to: its namespace (empty if it has none) and the name in its
/// [`keys::SERVICE_NAME`] label. `None` for a slice without that label.
pub fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let name = slice.metadata.labels.as_ref()?.get(keys::SERVICE_NAME)?;
    Some((slice.metadata.namespace.as_deref().unwrap_or_default(), name))
}

/// Slices grouped by the Service they belong to ([`service_of`]); slices without a Service are
/// left out.
#[derive(Debug, Default)]
pub struct SlicesByService<'a> {
    /// By namespace, then Service name (a pair would not borrow as a pair of `&str`s).
    by: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SlicesByService<'a> {
    pub fn new(slices: &'a [Arc<EndpointSlice>]) -> SlicesByService<'a> {
        let mut by: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        for slice in slices {
            if let Some((namespace, name)) = service_of(slice) {
                by.entry(namespace)
                    .or_default()
                    .entry(name)
                    .or_default()
                    .push(slice.as_ref());
            }
        }
        SlicesByService { by }
    }

    /// The slices of the Service `namespace/name`, in the order they were given.
    pub fn get(&self, namespace: &str, name: &str) -> &[&'a EndpointSlice] {
        self.by
            .get(namespace)
            .and_then(|services| services.get(name))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// An endpoint's conditions, missing ones defaulted as the API defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub fn of(endpoint: &Endpoint) -> Conditions {
        let c = endpoint.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        Conditions {
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        }
    }
}

/// The endpoints of one Service port. Each list is sorted, each address and port once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortEndpoints {
    /// The ready ones: where traffic goes.
    pub ready: Vec<SocketAddr>,
    /// The serving but terminating ones that are not ready: where kube-proxy sends traffic when
    /// no endpoint is ready, so connections in a rollout's last moments are not refused.
    pub terminating: Vec<SocketAddr>,
}

/// The endpoints of `port` from its Service's slices (IPv4 and IPv6 ones; FQDN slices are not
/// addresses). A slice without a port of that name and protocol, or with a number out of range,
/// adds nothing.
pub fn port_endpoints(slices: &[&EndpointSlice], port: &ServicePort) -> PortEndpoints {
    let name = port.name.as_deref().unwrap_or_default();
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == name && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let c = Conditions::of(endpoint);
            let into = if c.ready {
                &mut ready
            } else if c.serving && c.terminating {
                &mut terminating
            } else {
                continue;
            };
            for a in &endpoint.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    into.insert(SocketAddr::new(ip, number));
                }
            }
        }
    }
    PortEndpoints {
        ready: ready.into_iter().collect(),
        terminating: terminating.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn port(v: serde_json::Value) -> ServicePort {
        serde_json::from_value(v).unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// Three slices of `a/web` (one IPv6, one a second IPv4 at another port number), one of
    /// `b/web`, one FQDN slice and one without a Service.
    fn fixture() -> Vec<Arc<EndpointSlice>> {
        vec![
            slice(json!({
                "metadata": {"name": "web-1", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"name": "dns", "port": 5353, "protocol": "UDP"}
                ],
                "endpoints": [
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.2"]},
                    {"addresses": ["10.0.0.9"], "conditions": {"ready": false}},
                    {"addresses": ["10.0.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.0.0.8"], "conditions": {"ready": false, "serving": false, "terminating": true}}
                ]
            })),
            slice(json!({
                "metadata": {"name": "web-2", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9090}],
                "endpoints": [{"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}, {"addresses": ["not-an-ip"]}]
            })),
            slice(json!({
                "metadata": {"name": "web-3", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv6",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["fd00::2"]}, {"addresses": ["fd00::2"]}]
            })),
            slice(json!({
                "metadata": {"name": "web-x", "namespace": "b", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.0.1.1"]}]
            })),
            slice(json!({
                "metadata": {"name": "web-f", "namespace": "a", "labels": {keys::SERVICE_NAME: "web"}},
                "addressType": "FQDN",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["web.example.com"]}]
            })),
            slice(json!({
                "metadata": {"name": "stray", "namespace": "a"},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.0.2.1"]}]
            })),
        ]
    }

    #[test]
    fn slices_group_by_their_service_label_and_namespace() {
        let slices = fixture();
        let by = SlicesByService::new(&slices);
        let names = |ns, svc| -> Vec<_> {
            by.get(ns, svc)
                .iter()
                .map(|s| s.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names("a", "web"), vec!["web-1", "web-2", "web-3", "web-f"]);
        assert_eq!(names("b", "web"), vec!["web-x"]);
        assert!(names("a", "stray").is_empty());
        assert_eq!(service_of(&slices[3]), Some(("b", "web")));
        assert_eq!(service_of(&slices[5]), None);
    }

    #[test]
    fn a_port_takes_every_slice_with_its_name_and_protocol_at_that_slice_s_number() {
        let slices = fixture();
        let by = SlicesByService::new(&slices);
        let web = by.get("a", "web");
        let http = port_endpoints(web, &port(json!({"name": "http", "port": 80, "targetPort": "http"})));
        assert_eq!(
            http.ready,
            addrs(&[
                "10.0.0.2:8080",
                "10.0.0.3:8080",
                "10.0.0.3:9090",
                "10.0.0.4:9090",
                "[fd00::2]:8080"
            ])
        );
        assert_eq!(http.terminating, addrs(&["10.0.0.7:8080"]));
        let dns = port_endpoints(web, &port(json!({"name": "dns", "port": 53, "protocol": "UDP"})));
        assert_eq!(dns.ready, addrs(&["10.0.0.2:5353", "10.0.0.3:5353"]));
        // The same name over another protocol, and a name no slice has, have no endpoints.
        assert_eq!(
            port_endpoints(web, &port(json!({"name": "dns", "port": 53}))),
            PortEndpoints::default()
        );
        assert_eq!(
            port_endpoints(web, &port(json!({"name": "grpc", "port": 9000}))),
            PortEndpoints::default()
        );
    }

    #[test]
    fn an_unnamed_port_matches_unnamed_slice_ports_and_bad_numbers_are_skipped() {
        let slices = vec![
            slice(json!({
                "metadata": {"name": "s-1", "namespace": "n", "labels": {keys::SERVICE_NAME: "s"}},
                "addressType": "IPv4",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.0.0.1"]}]
            })),
            slice(json!({
                "metadata": {"name": "s-2", "namespace": "n", "labels": {keys::SERVICE_NAME: "s"}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 70000}],
                "endpoints": [{"addresses": ["10.0.0.2"]}]
            })),
        ];
        let by = SlicesByService::new(&slices);
        let got = port_endpoints(by.get("n", "s"), &port(json!({"port": 80})));
        assert_eq!(got.ready, addrs(&["10.0.0.1:8080"]));
    }

    #[test]
    fn missing_conditions_default_as_the_api_says() {
        let ep = |c: serde_json::Value| -> Endpoint {
            serde_json::from_value(json!({"addresses": [], "conditions": c})).unwrap()
        };
        let none: Endpoint = serde_json::from_value(json!({"addresses": []})).unwrap();
        let c = |ready, serving, terminating| Conditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(Conditions::of(&none), c(true, true, false));
        assert_eq!(Conditions::of(&ep(json!({}))), c(true, true, false));
        assert_eq!(Conditions::of(&ep(json!({"ready": false}))), c(false, false, false));
        assert_eq!(
            Conditions::of(&ep(json!({"ready": false, "serving": true, "terminating": true}))),
            c(false, true, true)
        );
    }
}
