//! A node upgraded in place: pins an older eni-cni left with other map layouts (here a
//! stand-in built from `datapath_v1.c`: 12-byte pod entries, no `nl_host_ends`) attached to
//! running pods. Until the next attach they are read as they are (`show`, CHECK, DEL); the
//! next attach replaces them, with the old pods carried over and the new program swapped onto
//! their host ends, and the last DEL removes everything.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use aya::EbpfLoader;
use aya::maps::HashMap;
use aya::programs::tc::{self, NlOptions, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use nodeless_eni_cni::bpf::{self, Pins, Walls};

use crate::support::{Pod, Scene, counter, plumb, pod, received, root, run};

/// The older datapath's object (see build.rs).
static OLDER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath_v1.o"));

#[test]
fn pins_of_an_older_layout_are_replaced_with_their_pods_kept() {
    if !root() {
        return;
    }
    let k = (std::process::id() % 250) as u8;
    let mut scene = Scene::new("u");
    let pins = Pins::for_network(&scene.network);
    let subnet = |last: u8| Ipv4Addr::new(10, 248, k, last);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let walls = Walls::default();

    // Three pods plumbed and attached the way the older eni-cni did, its pins left behind.
    let old: Vec<Pod> = ["a", "b", "z"]
        .iter()
        .zip([2, 3, 9])
        .map(|(name, last)| {
            let ns = scene.namespace(name);
            plumb(&rt, &scene.network, &ns, name, "eth0", subnet(last))
        })
        .collect();
    bpf::ensure_bpffs().unwrap();
    std::fs::create_dir_all(pins.dir.join("links")).unwrap();
    let mut older = EbpfLoader::new()
        .map_pin_path("nl_pods", pins.dir.join("nl_pods"))
        .map_pin_path("nl_stats", pins.dir.join("nl_stats"))
        .map_pin_path("nl_config", pins.dir.join("nl_config"))
        .load(OLDER)
        .expect("the older object loads");
    {
        let mut map: HashMap<_, u32, [u8; 12]> = HashMap::try_from(older.map_mut("nl_pods").unwrap()).unwrap();
        for p in &old {
            let mut v = [0u8; 12];
            v[..4].copy_from_slice(&p.endpoint.ifindex.to_ne_bytes());
            v[4..10].copy_from_slice(&p.endpoint.mac);
            map.insert(bpf::key(p.ip), v, 0).unwrap();
        }
    }
    let prog: &mut SchedClassifier = older.program_mut("from_pod").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog.pin(pins.dir.join("from_pod")).unwrap();
    for p in &old {
        tc::qdisc_add_clsact(&p.host_ifname).unwrap();
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: 1,
            handle: TcHandle::new(0, 1),
            classid: None,
        });
        let id = prog
            .attach_with_options(&p.host_ifname, TcAttachType::Ingress, options)
            .unwrap();
        std::mem::forget(prog.take_link(id).unwrap());
        prog.pin(pins.dir.join("links").join(&p.host_ifname)).unwrap();
    }
    drop(older);
    let (a, b, z) = (&old[0], &old[1], &old[2]);

    // Read as they are: show, CHECK and DEL work on the older layout.
    let show = pins.show().unwrap();
    assert!(
        show.contains(&format!("{:<15} ifindex {:<6}", a.ip, a.endpoint.ifindex)) && show.contains("sandbox unknown"),
        "{show}"
    );
    pins.check(&a.host_ifname, a.ip, a.endpoint.ifindex)
        .expect("CHECK on the older pins");
    pins.detach(&z.host_ifname, Some(z.ip)).expect("DEL on the older pins");
    assert!(
        !pins.show().unwrap().contains(&format!("{} ", z.ip)),
        "{}",
        pins.show().unwrap()
    );

    // The next ADD's attach replaces them: the pods kept (without a sandbox), the new pod
    // with its own, the new maps pinned.
    let c = pod(&rt, &mut scene, &pins, "c", subnet(4), walls);
    let show = pins.show().unwrap();
    for p in [a, b] {
        assert!(
            show.contains(&format!("{:<15} ifindex {:<6}", p.ip, p.endpoint.ifindex)),
            "{} carried over: {show}",
            p.ip
        );
    }
    assert!(show.contains(&format!("sandbox {}", c.endpoint.sandbox)), "{show}");
    assert!(
        pins.dir.join("nl_host_ends").exists() && pins.walls().unwrap() == walls,
        "{show}"
    );
    pins.check(&b.host_ifname, b.ip, b.endpoint.ifindex)
        .expect("CHECK after the upgrade");

    // This build's program now runs on the older pods' host ends: a's packets to b and c are
    // redirected (the older program never did), and a lie from a is dropped and counted.
    let (b_ip, c_ip) = (b.ip, c.ip);
    let listener = b.run(move || UdpSocket::bind((b_ip, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    run(&["ip", "-n", &a.ns, "addr", "add", &format!("{c_ip}/32"), "dev", "eth0"]);
    let (redirected, spoofed) = (counter(&pins, "redirected"), counter(&pins, "drop-spoofed"));
    let a_ip = a.ip;
    a.run(move || {
        for (from, text) in [(a_ip, "from a"), (c_ip, "from c")] {
            UdpSocket::bind((from, 0))
                .unwrap()
                .send_to(text.as_bytes(), to)
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(received(&listener), vec!["from a".to_string()]);
    assert!(
        counter(&pins, "redirected") > redirected,
        "a -> b through the new program: {}",
        pins.show().unwrap()
    );
    assert!(counter(&pins, "drop-spoofed") > spoofed, "{}", pins.show().unwrap());

    // The last DEL removes everything, the carried-over pods included.
    for p in [a, b, &c] {
        pins.detach(&p.host_ifname, Some(p.ip)).unwrap();
    }
    assert!(
        !pins.dir.exists(),
        "pins left: {:?}",
        std::fs::read_dir(&pins.dir).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect::<Vec<_>>())
    );
}
