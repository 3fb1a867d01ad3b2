//! The CNI fuzz targets ([`nodeless_eni_cni::spec::fuzz`]) as bounded property tests on the
//! stable toolchain: the same functions `cargo +nightly fuzz run` drives, on a fixed number of
//! seeded inputs, with every input that once broke a property kept as a seed.

#[path = "../../fuzz/stable.rs"]
mod stable;

use nodeless_eni_cni::spec::fuzz;

const CONFIGS: [&[u8]; 4] = [
    br#"{"cniVersion":"1.1.0","name":"pods","type":"eni-cni"}"#,
    br#"{"cniVersion":"1.0.0","name":"pods","type":"eni-cni","mode":"ipvlan","parent":"eth0","mtu":9001}"#,
    br#"{"cniVersion":"0.4.0","name":"pods","type":"eni-cni","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"version":"4","address":"10.0.0.2/32","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#,
    br#"{"cniVersion":"1.1.0","name":"pods","type":"eni-cni","clusterDNS":"10.66.0.1","cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}"#,
];

#[test]
fn config() {
    stable::run("cni_config", 20000, 512, &CONFIGS, fuzz::config);
}

#[test]
fn config_fields() {
    stable::run("cni_config_fields", 20000, 64, &[], fuzz::config_fields);
}

#[test]
fn result() {
    stable::run("cni_result", 20000, 32, &[], fuzz::result);
}
