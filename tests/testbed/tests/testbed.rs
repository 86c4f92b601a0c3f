//! The testbed itself: hosts reach each other on every rail, traffic leaves
//! on the NIC of its rail, a NIC taken down stops carrying traffic, the
//! topology file it writes says which GPU is affine to which NIC, and
//! nothing is left behind. Skips (with a message) where namespaces cannot be
//! made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use zccl_testbed::{Spec, Testbed, TestbedError};

fn testbed(spec: &Spec) -> Option<Testbed> {
    match Testbed::up(spec) {
        Ok(tb) => Some(tb),
        Err(TestbedError::Unavailable(why)) => {
            zccl_testbed::skip(why);
            None
        }
        Err(e) => panic!("testbed: {e}"),
    }
}

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send `bytes` from host 0 to host 1 on rail `k`; returns what arrived.
fn send_on_rail(tb: &Testbed, k: usize, bytes: usize) -> Result<usize, String> {
    let (tx, rx) = mpsc::channel();
    let bind = SocketAddr::from((tb.addr(1, k), 0));
    let server = tb.in_host(1, move || -> std::io::Result<usize> {
        let l = TcpListener::bind(bind)?;
        tx.send(l.local_addr()?.port()).unwrap();
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let dest = SocketAddr::from((tb.addr(1, k), port));
    let client = tb.in_host(0, move || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&dest, Duration::from_secs(2))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&vec![7u8; bytes])?;
        Ok(())
    });
    let sent = client.join().unwrap().map_err(|e| e.to_string())?;
    sent.map_err(|e| e.to_string())?;
    let got = server.join().unwrap().map_err(|e| e.to_string())?;
    got.map_err(|e| e.to_string())
}

#[test]
fn every_rail_connects_and_traffic_leaves_on_its_own_nic() {
    let Some(tb) = testbed(&Spec {
        hosts: 2,
        nics: 2,
        rate: Some("400mbit".into()),
        ..Spec::default()
    }) else {
        return;
    };
    for k in 0..2 {
        let before: Vec<u64> = (0..2).map(|n| tb.tx_bytes(0, n).unwrap()).collect();
        let got = send_on_rail(&tb, k, 2 << 20).unwrap();
        assert_eq!(got, 2 << 20);
        let after: Vec<u64> = (0..2).map(|n| tb.tx_bytes(0, n).unwrap()).collect();
        let on_rail = after[k] - before[k];
        let other = after[1 - k] - before[1 - k];
        assert!(on_rail >= 2 << 20, "rail {k} sent only {on_rail} bytes");
        assert!(
            other < 64 << 10,
            "NIC {} carried {other} bytes of rail {k}'s traffic",
            1 - k
        );
    }
}

#[test]
fn a_nic_taken_down_carries_nothing_until_it_comes_back() {
    let Some(tb) = testbed(&Spec {
        hosts: 2,
        nics: 2,
        ..Spec::default()
    }) else {
        return;
    };
    tb.set_link(0, 1, false).unwrap();
    assert!(send_on_rail(&tb, 1, 1024).is_err(), "rail 1 is down");
    assert_eq!(send_on_rail(&tb, 0, 1024), Ok(1024), "rail 0 still up");
    tb.set_link(0, 1, true).unwrap();
    // The link needs a moment to come back up (carrier, ARP); retry briefly.
    let mut last = Err(String::new());
    for _ in 0..50 {
        last = send_on_rail(&tb, 1, 1024);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last, Ok(1024));
    tb.set_rate(0, 0, "100mbit").unwrap();
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    let prefix = {
        let Some(tb) = testbed(&Spec {
            hosts: 3,
            nics: 1,
            ..Spec::default()
        }) else {
            return;
        };
        let ns = tb.host_ns(2);
        assert!(namespaces().contains(&ns));
        ns
    };
    assert!(!namespaces().contains(&prefix), "{prefix} left behind");
    let made = std::thread::spawn(|| {
        let tb = Testbed::up(&Spec {
            hosts: 2,
            nics: 1,
            ..Spec::default()
        })
        .unwrap();
        let ns = tb.host_ns(0);
        std::panic::panic_any(ns);
    })
    .join()
    .unwrap_err();
    let ns = made.downcast_ref::<String>().unwrap();
    assert!(
        !namespaces().contains(ns.as_str()),
        "{ns} left behind after a panic"
    );
}

#[test]
fn bad_specs_are_refused() {
    if let Err(e) = zccl_testbed::available() {
        zccl_testbed::skip(e);
        return;
    }
    for spec in [
        Spec {
            hosts: 0,
            ..Spec::default()
        },
        Spec {
            nics: 0,
            ..Spec::default()
        },
        Spec {
            net: [8, 8],
            ..Spec::default()
        },
    ] {
        assert!(
            matches!(Testbed::up(&spec), Err(TestbedError::Spec(_))),
            "{spec:?}"
        );
    }
}

#[test]
fn topology_file_makes_rank_r_affine_to_nic_r_mod_k() {
    // Needs no root: only the XML is checked.
    for (nics, ranks) in [(4, 4), (2, 4), (4, 2)] {
        let spec = Spec {
            nics,
            rate: Some("400mbit".into()),
            ..Spec::default()
        };
        let xml = zccl_testbed_xml(&spec, ranks);
        let topo = zccl_topology::xml::parse_str(&xml, "testbed.xml").unwrap();
        let aff = zccl_topology::affinity::affinity(&topo);
        assert_eq!(aff.len(), ranks);
        for a in &aff {
            let dev = topo.gpus[a.gpu].dev as usize;
            let nic = &topo.nets[a.primary.unwrap()];
            assert_eq!(
                nic.name,
                format!("nic{}", dev % nics),
                "{nics} NICs, {ranks} ranks"
            );
            assert_eq!(nic.speed_mbps, Some(400));
            assert_eq!(nic.rail, Some((dev % nics) as u32));
        }
    }
}

/// `Testbed::topo_xml` without building namespaces.
fn zccl_testbed_xml(spec: &Spec, ranks: usize) -> String {
    zccl_testbed::topo_xml(spec, ranks)
}
