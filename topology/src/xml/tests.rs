use super::*;
use crate::model::{
    Cpu, DeviceClass, Gpu, Net, NetKind, NodeId, NodeKind, NvLink, Pci, PortState, Topology,
};
use std::fmt::Write as _;
use std::path::PathBuf;

/// A fixture-like file: a full dump part (switch with GPU + dual-port IB
/// NIC, virtual NIC under a CPU) and a partial part (bare leaves under a
/// fake switch), with a declaration, a comment and an unknown element.
const SMALL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- made-up host -->
<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="143">
    <pci busid="0000:17:00.0" class="0x060400" vendor="0x10b5" device="0x9797" subsystem_vendor="0x10b5" subsystem_device="0x9797" link_speed="32.0 GT/s PCIe" link_width="16">
      <pci busid="0000:1A:00.0" class="0x020700" vendor="0x15b3" device="0x1021" link_speed="32.0 GT/s PCIe" link_width="16">
        <nic>
          <net name="mlx5_1" dev="1" speed="400000" port="2" guid="0x1111" maxconn="131072" gdr="1"/>
          <net name="mlx5_0" dev="0" speed="400000" port="1" guid="0x1111" maxconn="131072" gdr="1"/>
        </nic>
      </pci>
      <pci busid="0000:19:00.0" class="0x030200" vendor="0x10de" device="0x2330" link_speed="32.0 GT/s PCIe" link_width="16">
        <gpu dev="0" sm="90" rank="0" gdr="1">
          <nvlink target="0000:aa:00.0" count="18" tclass="0x068000"/>
          <c2c bw="1000" count="2"/>
        </gpu>
      </pci>
    </pci>
    <fancy thing="1"><pci busid="bogus"/></fancy>
  </cpu>
  <cpu numaid="1" affinity="ffff0000" arch="x86_64">
    <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:9a:00.0" class="0x020000" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:99:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:98:00.0" class="0x120000" link_speed="" link_width="0"/>
    </pci>
    <nic><net name="eth0" dev="2" speed="100000" port="0" guid="0x2" gdr="0" state="up" netdev="eth0"/></nic>
    <nic><net name="nodev" speed="1"/></nic>
  </cpu>
</system>
"#;

fn fixture_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/topologies");
    if dir.is_dir() {
        Some(dir)
    } else {
        // Straight to stderr, past libtest's capture: the skip shows
        // in `cargo test` output (as `zccl_testbed::skip` does).
        use std::io::Write;
        let t = std::thread::current();
        let msg = format!(
            "SKIPPED {}: ../shared/fixtures not present\n",
            t.name().unwrap_or("test")
        );
        let _ = std::io::stderr().lock().write_all(msg.as_bytes());
        None
    }
}

fn fixture(name: &str) -> Option<Topology> {
    let dir = fixture_dir()?;
    Some(load(&dir.join(name)).unwrap())
}

fn cleared(mut t: Topology) -> Topology {
    t.warnings.clear();
    t
}

/// parse(to_string(t)) == t and to_string is idempotent.
fn assert_round_trip(t: &Topology) {
    let text = to_string(t);
    let back = parse_str(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cleared(back.clone()), cleared(t.clone()), "\n{text}");
    assert_eq!(to_string(&back), text);
}

fn xml_err(text: &str) -> (usize, String, String) {
    match parse_str(text, "f.xml") {
        Err(TopoError::Xml {
            file,
            line,
            element,
            reason,
        }) => {
            assert_eq!(file, "f.xml");
            (line, element, reason)
        }
        other => panic!("expected an XML error, got {other:?}"),
    }
}

fn busid(t: &Topology, id: NodeId) -> &str {
    &t.pci(id).unwrap().busid
}

#[test]
fn small_structure() {
    let t = parse_str(SMALL, "small.xml").unwrap();
    assert_eq!(t.cpus.len(), 2);
    let c0 = t.cpu(t.cpus[0]).unwrap();
    assert_eq!(c0.numaid, 0);
    assert_eq!(c0.affinity.as_deref(), Some("0000ffff"));
    assert_eq!(c0.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!((c0.familyid, c0.modelid), (Some(6), Some(143)));
    let c1 = t.cpu(t.cpus[1]).unwrap();
    assert_eq!((c1.vendor.as_ref(), c1.familyid), (None, None));

    // Switch children sorted by bus ID; bus IDs lower-cased.
    let sw = t.find_busid("0000:17:00.0").unwrap();
    let kids: Vec<&str> = t.nodes[sw].children.iter().map(|&c| busid(&t, c)).collect();
    assert_eq!(kids, ["0000:19:00.0", "0000:1a:00.0"]);
    let p = t.pci(sw).unwrap();
    assert_eq!(p.class, 0x060400);
    assert_eq!((p.vendor, p.device), (Some(0x10b5), Some(0x9797)));
    assert_eq!(p.subsystem_device, Some(0x9797));
    assert_eq!(p.link_speed, "32.0 GT/s PCIe");
    assert_eq!(p.link_width, 16);
    assert_eq!(p.sysfs_path, None);

    // GPUs: explicit dev 0, then the implicit ones get the free numbers
    // in bus-ID order (accelerator 98 before GPU 99).
    let g: Vec<(u32, &str, DeviceClass, Option<u32>)> = t
        .gpus
        .iter()
        .map(|g| (g.dev, busid(&t, g.node), g.class, g.sm))
        .collect();
    assert_eq!(
        g,
        [
            (0, "0000:19:00.0", DeviceClass::Gpu, Some(90)),
            (1, "0000:98:00.0", DeviceClass::Accelerator, None),
            (2, "0000:99:00.0", DeviceClass::Gpu, None),
        ]
    );
    let g0 = &t.gpus[0];
    assert_eq!((g0.rank, g0.gdr), (Some(0), Some(true)));
    assert_eq!(
        g0.nvlinks,
        [NvLink {
            target: "0000:aa:00.0".into(),
            count: 18,
            tclass: 0x068000
        }]
    );

    // Nets in DFS order, by dev within a node; the partial NIC leaf gets
    // the next dev after the explicit ones (max 2).
    let n: Vec<(&str, u32, NetKind, bool)> = t
        .nets
        .iter()
        .map(|n| (n.name.as_str(), n.dev, n.kind, n.is_virtual))
        .collect();
    assert_eq!(
        n,
        [
            ("mlx5_0", 0, NetKind::Ib, false),
            ("mlx5_1", 1, NetKind::Ib, false),
            ("eth0", 2, NetKind::Socket, true),
            ("0000:9a:00.0", 3, NetKind::Socket, false),
        ]
    );
    let m = &t.nets[1];
    assert_eq!(m.node, t.find_busid("0000:1a:00.0").unwrap());
    assert_eq!(
        (m.speed_mbps, m.port, m.guid.as_deref(), m.maxconn, m.gdr),
        (
            Some(400000),
            Some(2),
            Some("0x1111"),
            Some(131072),
            Some(true)
        )
    );
    let e = &t.nets[2];
    assert_eq!(e.node, t.cpus[1]);
    assert_eq!(
        (e.state, e.netdev.as_deref()),
        (PortState::Up, Some("eth0"))
    );
    assert_eq!(t.nets[0].state, PortState::Unknown);

    // Warnings: c2c, unknown element, net without dev.
    assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
    assert!(t.warnings[0].starts_with("small.xml:15: <c2c>"));
    assert!(t.warnings[1].starts_with("small.xml:19: unknown element <fancy>"));
    assert!(t.warnings[2].contains("nodev"));
    assert!(t.find_busid("bogus").is_none());
}

#[test]
fn small_round_trip() {
    let t = parse_str(SMALL, "small.xml").unwrap();
    assert_round_trip(&t);
    let text = to_string(&t);
    // Bare leaves for the partial parts, <gpu> only where sm is known.
    assert!(text.contains(
            "      <pci busid=\"0000:9a:00.0\" class=\"0x020000\" link_speed=\"16 GT/s\" link_width=\"16\"/>\n"
        ));
    assert!(text.contains(
            "      <pci busid=\"0000:99:00.0\" class=\"0x030200\" link_speed=\"16 GT/s\" link_width=\"16\"/>\n"
        ));
    assert_eq!(text.matches("<gpu ").count(), 1);
    assert!(!text.contains("c2c") && !text.contains("fancy") && !text.contains("nodev"));
}

#[test]
fn export_format() {
    let t = parse_str(SMALL, "small.xml").unwrap();
    let text = to_string(&t);
    let expected = r#"<system version="1">
  <cpu numaid="0" affinity="0000ffff" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="143">
    <pci busid="0000:17:00.0" class="0x060400" vendor="0x10b5" device="0x9797" subsystem_vendor="0x10b5" subsystem_device="0x9797" link_speed="32.0 GT/s PCIe" link_width="16">
      <pci busid="0000:19:00.0" class="0x030200" vendor="0x10de" device="0x2330" link_speed="32.0 GT/s PCIe" link_width="16">
        <gpu dev="0" sm="90" rank="0" gdr="1">
          <nvlink target="0000:aa:00.0" count="18" tclass="0x068000"/>
        </gpu>
      </pci>
      <pci busid="0000:1a:00.0" class="0x020700" vendor="0x15b3" device="0x1021" link_speed="32.0 GT/s PCIe" link_width="16">
        <nic>
          <net name="mlx5_0" dev="0" speed="400000" port="1" guid="0x1111" maxconn="131072" gdr="1"/>
          <net name="mlx5_1" dev="1" speed="400000" port="2" guid="0x1111" maxconn="131072" gdr="1"/>
        </nic>
      </pci>
    </pci>
  </cpu>
  <cpu numaid="1" affinity="ffff0000" arch="x86_64">
    <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:98:00.0" class="0x120000" link_speed="" link_width="0"/>
      <pci busid="0000:99:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:9a:00.0" class="0x020000" link_speed="16 GT/s" link_width="16"/>
    </pci>
    <nic>
      <net name="eth0" dev="2" speed="100000" port="0" guid="0x2" gdr="0" state="up" netdev="eth0"/>
    </nic>
  </cpu>
</system>
"#;
    assert_eq!(text, expected);
}

/// Topology built by hand, in canonical order (sorted, nets in DFS
/// order), with every exported field set somewhere.
fn hand_built() -> Topology {
    let mut t = Topology::default();
    let c0 = t.add_node(
        None,
        NodeKind::Cpu(Cpu {
            numaid: 0,
            affinity: Some("00ff&<\"'>".into()),
            arch: Some("x86_64".into()),
            vendor: Some("  Shanghai  ".into()),
            familyid: Some(7),
            modelid: Some(59),
        }),
    );
    let mut sw = Pci::new("0000:10:00.0", 0x060400);
    sw.link_speed = "16.0 GT/s PCIe".into();
    sw.link_width = 16;
    let sw = t.add_node(Some(c0), NodeKind::Pci(sw));
    let mut g = Pci::new("0000:11:00.0", 0x030200);
    g.vendor = Some(0x10de);
    g.device = Some(0x20b0);
    g.subsystem_vendor = Some(0);
    g.subsystem_device = Some(0x1450);
    let gpu = t.add_node(Some(sw), NodeKind::Pci(g));
    let nic = t.add_node(Some(sw), NodeKind::Pci(Pci::new("0000:12:00.0", 0x020700)));
    let c1 = t.add_node(None, NodeKind::Cpu(Cpu::new(-1)));
    let acc = t.add_node(Some(c1), NodeKind::Pci(Pci::new("0000:80:00.0", 0x0b4000)));
    let g2 = t.add_node(Some(c1), NodeKind::Pci(Pci::new("0000:81:00.0", 0x030000)));
    t.gpus = vec![
        Gpu {
            node: gpu,
            dev: 0,
            class: DeviceClass::Gpu,
            sm: Some(80),
            rank: Some(3),
            gdr: Some(false),
            name: None,
            nvlinks: vec![
                NvLink {
                    target: "0000:11:00.0".into(),
                    count: 12,
                    tclass: 0x030200,
                },
                NvLink {
                    target: "fffffff:ffff:ff".into(),
                    count: 6,
                    tclass: 0x068000,
                },
            ],
        },
        Gpu::new(acc, 1, DeviceClass::Accelerator),
        Gpu::new(g2, 2, DeviceClass::Gpu),
    ];
    let mut eth = Net::new("eth0", c0, NetKind::Socket);
    eth.dev = 2;
    eth.speed_mbps = Some(25000);
    eth.is_virtual = true;
    eth.state = PortState::Down;
    let mut p1 = Net::new("mlx5_0", nic, NetKind::Ib);
    p1.dev = 0;
    p1.speed_mbps = Some(200000);
    p1.port = Some(1);
    p1.guid = Some("0xabcd".into());
    p1.gdr = Some(true);
    p1.rail = Some(0);
    p1.latency = Some("0.000000".into());
    p1.maxconn = Some(131072);
    p1.link_layer = Some("InfiniBand".into());
    p1.state = PortState::Up;
    p1.netdev = Some("ib0".into());
    let mut p2 = p1.clone();
    p2.name = "mlx5_1".into();
    p2.dev = 1;
    p2.port = Some(2);
    p2.rail = Some(1);
    p2.netdev = Some("ib1".into());
    t.nets = vec![eth, p1, p2];
    t
}

#[test]
fn hand_built_round_trip() {
    let t = hand_built();
    assert_round_trip(&t);
    let text = to_string(&t);
    assert!(
        text.contains(r#"affinity="00ff&amp;&lt;&quot;&apos;&gt;""#),
        "{text}"
    );
    assert!(text.contains(r#"<cpu numaid="-1">"#));
    assert!(text.contains(r#"subsystem_vendor="0x0000" subsystem_device="0x1450""#));
    assert!(text.contains(
            r#"<net name="mlx5_1" dev="1" speed="200000" port="2" latency="0.000000" guid="0xabcd" maxconn="131072" gdr="1" rail="1" link_layer="InfiniBand" state="up" netdev="ib1"/>"#
        ));
    assert!(
        text.contains(
            r#"<pci busid="0000:80:00.0" class="0x0b4000" link_speed="" link_width="0"/>"#
        )
    );
}

#[test]
fn probe_only_fields_not_written() {
    let mut t = hand_built();
    t.nets[1].mac = Some("aa:bb:cc:dd:ee:ff".into());
    t.nets[1].addrs = vec!["10.0.0.1/24".into()];
    if let NodeKind::Pci(p) = &mut t.nodes[3].kind {
        p.sysfs_path = Some(vec!["pci0000:10".into(), "0000:10:00.0".into()]);
    }
    let text = to_string(&t);
    assert_eq!(text, to_string(&hand_built()));
    assert!(!text.contains("aa:bb") && !text.contains("10.0.0.1"));
}

#[test]
fn unsorted_topology_is_written_sorted() {
    let mut t = Topology::default();
    let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
    let b = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:02:00.0", 0x020700)));
    let a = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020700)));
    let mut nb = Net::new("0000:02:00.0", b, NetKind::Ib);
    nb.dev = 1;
    let mut na = Net::new("0000:01:00.0", a, NetKind::Ib);
    na.dev = 0;
    t.nets = vec![nb, na];
    let text = to_string(&t);
    assert!(
        !text.contains("<net"),
        "auto ports are bare leaves:\n{text}"
    );
    assert!(text.find("0000:01").unwrap() < text.find("0000:02").unwrap());
    let back = parse_str(&text, "x").unwrap();
    let names: Vec<(&str, u32)> = back.nets.iter().map(|n| (n.name.as_str(), n.dev)).collect();
    assert_eq!(names, [("0000:01:00.0", 0), ("0000:02:00.0", 1)]);
}

#[test]
fn auto_like_nets_with_other_devs_are_written_explicitly() {
    let mut t = Topology::default();
    let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
    let a = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020000)));
    let b = t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:02:00.0", 0x020000)));
    let mut na = Net::new("0000:01:00.0", a, NetKind::Socket);
    na.dev = 5;
    let mut nb = Net::new("0000:02:00.0", b, NetKind::Socket);
    nb.dev = 3;
    t.nets = vec![na, nb];
    let text = to_string(&t);
    assert_eq!(text.matches("<net ").count(), 2, "{text}");
    assert_round_trip(&t);
}

#[test]
fn nic_without_ports_gets_empty_nic() {
    let mut t = Topology::default();
    let c = t.add_node(None, NodeKind::Cpu(Cpu::new(0)));
    t.add_node(Some(c), NodeKind::Pci(Pci::new("0000:01:00.0", 0x020000)));
    let text = to_string(&t);
    assert!(text.contains("<nic/>"), "{text}");
    assert_round_trip(&t);
    assert!(parse_str(&text, "x").unwrap().nets.is_empty());
}

#[test]
fn empty_system_and_empty_cpu() {
    let t = parse_str(r#"<system version="1"/>"#, "x").unwrap();
    assert_eq!(t, Topology::default());
    assert_eq!(to_string(&t), "<system version=\"1\">\n</system>\n");
    assert_round_trip(&t);
    let t = parse_str(
        r#"<system version=" 1 "><cpu numaid="-1"></cpu></system>"#,
        "x",
    )
    .unwrap();
    assert_eq!(t.cpu(t.cpus[0]).unwrap().numaid, -1);
    assert!(to_string(&t).contains("  <cpu numaid=\"-1\"/>\n"));
}

#[test]
fn implicit_dev_rules() {
    let wrap = |body: &str| format!(r#"<system version="1"><cpu numaid="0">{body}</cpu></system>"#);
    let devs = |t: &Topology| -> Vec<(u32, String)> {
        t.gpus
            .iter()
            .map(|g| (g.dev, busid(t, g.node).to_string()))
            .collect()
    };
    // None explicit: bus-ID order.
    let t = parse_str(
        &wrap(
            r#"<pci busid="0000:03:00.0" class="0x030200"/>
                   <pci busid="0000:01:00.0" class="0x030000"/>
                   <pci busid="0000:02:00.0" class="0x0b4000"/>"#,
        ),
        "x",
    )
    .unwrap();
    assert_eq!(
        devs(&t),
        [
            (0, "0000:01:00.0".into()),
            (1, "0000:02:00.0".into()),
            (2, "0000:03:00.0".into())
        ]
    );
    assert_eq!(t.gpus[1].class, DeviceClass::Accelerator);
    // All explicit: as given, sorted by dev.
    let t = parse_str(
        &wrap(
            r#"<pci busid="0000:01:00.0" class="0x030200"><gpu dev="7" sm="80"/></pci>
                   <pci busid="0000:02:00.0" class="0x030200"><gpu dev="3" sm="80"/></pci>"#,
        ),
        "x",
    )
    .unwrap();
    assert_eq!(
        devs(&t),
        [(3, "0000:02:00.0".into()), (7, "0000:01:00.0".into())]
    );
    // Mixed: the implicit ones take the free numbers in bus-ID order.
    let t = parse_str(
        &wrap(
            r#"<pci busid="0000:04:00.0" class="0x030200"/>
                   <pci busid="0000:01:00.0" class="0x030200"><gpu dev="1" sm="80"/></pci>
                   <pci busid="0000:03:00.0" class="0x030200"/>
                   <pci busid="0000:02:00.0" class="0x030200"><gpu dev="0" sm="80"/></pci>
                   <pci busid="0000:05:00.0" class="0x030200"><gpu dev="3" sm="80"/></pci>"#,
        ),
        "x",
    )
    .unwrap();
    assert_eq!(
        devs(&t),
        [
            (0, "0000:02:00.0".into()),
            (1, "0000:01:00.0".into()),
            (2, "0000:03:00.0".into()),
            (3, "0000:05:00.0".into()),
            (4, "0000:04:00.0".into())
        ]
    );
    assert_round_trip(&t);
    // A <gpu> under a non-GPU class is still a GPU.
    let t = parse_str(
        &wrap(r#"<pci busid="0000:01:00.0" class="0x068000"><gpu dev="0" sm="90"/></pci>"#),
        "x",
    )
    .unwrap();
    assert_eq!(t.gpus[0].class, DeviceClass::Gpu);
    // Duplicate explicit dev.
    let (line, el, reason) = xml_err(&wrap(
        "\n<pci busid=\"0000:01:00.0\" class=\"0x030200\"><gpu dev=\"0\" sm=\"80\"/></pci>\n\
             <pci busid=\"0000:02:00.0\" class=\"0x030200\"><gpu dev=\"0\" sm=\"80\"/></pci>",
    ));
    assert_eq!((line, el.as_str()), (3, "gpu"));
    assert!(
        reason.contains("duplicate dev 0") && reason.contains("line 2"),
        "{reason}"
    );
}

#[test]
fn net_rules() {
    let t = parse_str(
        r#"<system version="1"><cpu numaid="0">
                 <pci busid="0000:01:00.0" class="0x020000">
                   <nic>
                     <net name="roce0" dev="0" link_layer="Ethernet" speed="0" state="DOWN"/>
                     <net name="sock0" dev="1" speed="-1" gdr="0"/>
                   </nic>
                 </pci>
                 <pci busid="0000:02:00.0" class="0x028000"/>
                 <pci busid="0000:03:00.0" class="0x020700"/>
               </cpu></system>"#,
        "x",
    )
    .unwrap();
    let n: Vec<(&str, u32, NetKind)> = t
        .nets
        .iter()
        .map(|n| (n.name.as_str(), n.dev, n.kind))
        .collect();
    assert_eq!(
        n,
        [
            ("roce0", 0, NetKind::Ib),
            ("sock0", 1, NetKind::Socket),
            ("0000:02:00.0", 2, NetKind::Socket),
            ("0000:03:00.0", 3, NetKind::Ib),
        ]
    );
    assert_eq!(t.nets[0].speed_mbps, None);
    assert_eq!(t.nets[1].speed_mbps, None);
    assert_eq!(t.nets[0].state, PortState::Down);
    assert_eq!(t.nets[1].gdr, Some(false));
    assert_round_trip(&t);

    let (line, el, reason) = xml_err(
        "<system version=\"1\"><cpu numaid=\"0\"><nic>\n<net name=\"a\" dev=\"0\"/>\n<net name=\"a\" dev=\"1\"/></nic></cpu></system>",
    );
    assert_eq!((line, el.as_str()), (3, "net"));
    assert!(reason.contains("duplicate net name \"a\""), "{reason}");
    let (_, _, reason) = xml_err(
        r#"<system version="1"><cpu numaid="0"><nic><net name="a" dev="0" state="flaky"/></nic></cpu></system>"#,
    );
    assert!(reason.contains("state=\"flaky\""), "{reason}");
    let (_, el, reason) = xml_err(
        r#"<system version="1"><cpu numaid="0"><nic><net name="0000:01:00.0" dev="0"/></nic><pci busid="0000:01:00.0" class="0x020000"/></cpu></system>"#,
    );
    assert_eq!(el, "pci");
    assert!(reason.contains("already the name"), "{reason}");
}

#[test]
fn structural_errors() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "<system version=\"1\">\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></system>",
            2,
            "pci",
            "directly under <system>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\">\n<cpu numaid=\"1\"/></cpu></system>",
            2,
            "cpu",
            "nested <cpu>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\">\n<pci busid=\"0000:02:00.0\" class=\"0x0\"><cpu numaid=\"1\"/></pci></pci></cpu></system>",
            2,
            "cpu",
            "directly under <system>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\">\n\n<gpu dev=\"0\" sm=\"80\"/></cpu></system>",
            3,
            "gpu",
            "must be under <pci>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><net name=\"x\" dev=\"0\"/></cpu></system>",
            1,
            "net",
            "must be under <nic>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><nic>\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></nic></cpu></system>",
            2,
            "pci",
            "<nic> cannot contain <pci>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"1\">\n<pci busid=\"0000:02:00.0\" class=\"0x0\"/></gpu></pci></cpu></system>",
            2,
            "pci",
            "<gpu> cannot contain <pci>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"1\"/><gpu dev=\"1\" sm=\"1\"/></pci></cpu></system>",
            1,
            "gpu",
            "more than one <gpu>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><nvlink target=\"x\" count=\"1\" tclass=\"0x0\"/></cpu></system>",
            1,
            "nvlink",
            "must be under <gpu>",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><nic><nic/></nic></pci></cpu></system>",
            1,
            "nic",
            "must be under <pci> or <cpu>",
        ),
        (
            "<system version=\"1\"><nic/></system>",
            1,
            "nic",
            "must be under <pci> or <cpu>",
        ),
        ("<cpu numaid=\"0\"/>", 1, "cpu", "directly under <system>"),
        (
            "<!-- nothing -->\n<other/>\n",
            1,
            "system",
            "no <system> element",
        ),
        ("", 1, "system", "no <system> element"),
        (
            "<system version=\"1\"/>\n<system version=\"1\"/>",
            2,
            "system",
            "more than one <system>",
        ),
        (
            "<system version=\"1\">\n  <system version=\"1\"/></system>",
            2,
            "system",
            "more than one <system>",
        ),
        (
            "<system version=\"2\"/>",
            1,
            "system",
            "unsupported version 2",
        ),
        ("<system/>", 1, "system", "missing attribute version"),
        (
            "<system version=\"1\"><cpu numaid=\"0\">\n<pci class=\"0x030200\"/></cpu></system>",
            2,
            "pci",
            "missing attribute busid",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\"/></cpu></system>",
            2,
            "pci",
            "missing attribute class",
        ),
        (
            "<system version=\"1\">\n<cpu numaid=\"abc\"/></system>",
            2,
            "cpu",
            "numaid=\"abc\" is not an integer",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\" familyid=\"-1\"/></system>",
            1,
            "cpu",
            "familyid=\"-1\" is not an integer",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\" link_width=\"x16\"/></cpu></system>",
            1,
            "pci",
            "link_width=\"x16\" is not an integer",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0xgg\"/></cpu></system>",
            1,
            "pci",
            "class=\"0xgg\"",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x1000000\"/></cpu></system>",
            1,
            "pci",
            "24-bit",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\" vendor=\"0x10000\"/></cpu></system>",
            1,
            "pci",
            "16-bit",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0:1:2.3\" class=\"0x0\"/></cpu></system>",
            1,
            "pci",
            "not a PCI bus ID",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"/>\n<pci busid=\"0000:01:00.0\" class=\"0x0\"/></cpu></system>",
            2,
            "pci",
            "duplicate busid 0000:01:00.0 (first at line 1)",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu sm=\"80\"/></pci></cpu></system>",
            1,
            "gpu",
            "missing attribute dev",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\"/></pci></cpu></system>",
            1,
            "gpu",
            "missing attribute sm",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x0\"><gpu dev=\"0\" sm=\"9\"><nvlink target=\"a\" count=\"z\" tclass=\"0x0\"/></gpu></pci></cpu></system>",
            1,
            "nvlink",
            "count=\"z\" is not an integer",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><nic><net dev=\"0\"/></nic></cpu></system>",
            1,
            "net",
            "missing attribute name",
        ),
        (
            "<system version=\"1\"><cpu numaid=\"0\"><nic><net name=\"a\" dev=\"0\" port=\"one\"/></nic></cpu></system>",
            1,
            "net",
            "port=\"one\" is not an integer",
        ),
    ];
    for &(text, line, element, reason) in cases {
        let (l, e, r) = xml_err(text);
        assert_eq!((l, e.as_str()), (line, element), "{text}: {r}");
        assert!(r.contains(reason), "{text}: {r:?} lacks {reason:?}");
    }
}

#[test]
fn malformed_xml_errors() {
    // Unclosed tag at end of input: the element and its line.
    let (line, el, reason) = xml_err("<system version=\"1\">\n  <cpu numaid=\"0\">\n");
    assert_eq!((line, el.as_str()), (2, "cpu"));
    assert!(reason.contains("</cpu>"), "{reason}");
    // Mismatched end tag.
    let (line, el, reason) = xml_err(
        "<system version=\"1\">\n<cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"0x0\">\n</cpu></system>",
    );
    assert_eq!((line, el.as_str()), (4, "pci"));
    assert!(
        reason.contains("`</pci>`") && reason.contains("cpu"),
        "{reason}"
    );
    // Bad attribute syntax.
    let (line, el, reason) = xml_err("<system version=\"1\">\n\n<cpu numaid=0/></system>");
    assert_eq!((line, el.as_str()), (3, "cpu"));
    assert!(!reason.is_empty());
    let (_, el, _) = xml_err("<system version=\"1\"><cpu numaid=\"0\" numaid=\"1\"/></system>");
    assert_eq!(el, "cpu");
    // Truncated tag.
    let (line, el, _) = xml_err("<system version=\"1\">\n<cpu numaid=\"0\"");
    assert_eq!((line, el.as_str()), (2, "system"));
    // Unmatched end tag, bad entity.
    xml_err("</system>");
    let (_, el, _) = xml_err("<system version=\"1\"><cpu numaid=\"0\" arch=\"&bogus;\"/></system>");
    assert_eq!(el, "cpu");
}

#[test]
fn comments_declaration_unknown_and_escapes() {
    let t = parse_str(
            "\u{feff}<?xml version=\"1.0\"?>\n<!DOCTYPE system>\n<!-- a -->\n<system version=\"1\" name=\"h\">\n<!-- <cpu numaid=\"9\"/> -->\n<cpu numaid=\"0\" arch=\"x&amp;y\" host_hash=\"0x1\">text<![CDATA[x]]></cpu>\n<extra><cpu/></extra>\n</system>\n<!-- tail -->\n",
            "c.xml",
        )
        .unwrap();
    assert_eq!(t.cpus.len(), 1);
    assert_eq!(t.cpu(t.cpus[0]).unwrap().arch.as_deref(), Some("x&y"));
    assert_eq!(t.warnings, ["c.xml:7: unknown element <extra> ignored"]);
    assert_round_trip(&t);
}

#[test]
fn garbled_inputs_do_not_panic() {
    let inputs = [
        "<",
        ">",
        "<<<>>>",
        "<system",
        "<system version=\"1\"",
        "<system version=\"1\"><",
        "<system version=\"1\"></",
        "<system version=\"1\"></sys",
        "<system version=1>",
        "<system version=\"1\" version=\"1\"/>",
        "<system version=\"99999999999999999999\"/>",
        "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x030200\"><gpu dev=\"4294967295\" sm=\"1\"/></pci><pci busid=\"0000:02:00.0\" class=\"0x030200\"/></cpu></system>",
        "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x020000\"><nic><net name=\"a\" dev=\"4294967295\"/></nic></pci><pci busid=\"0000:02:00.0\" class=\"0x020000\"/></cpu></system>",
        "<system version=\"1\"><!-- unterminated",
        "<system version=\"1\"><![CDATA[",
        "<?xml",
        "<!DOCTYPE",
        "\u{0}\u{1}\u{2}",
        "<système version=\"1\"/>",
        "<system version=\"1\">é</system>",
        "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"\"/></cpu></system>",
        "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"0x\"/></cpu></system>",
        "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"ffff:ff:01.0\" class=\"+1\"/></cpu></system>",
        "<system version=\"1\"></cpu></system>",
        "<a><b><c></a>",
    ];
    for text in inputs {
        let _ = parse_str(text, "g.xml");
    }
    // An explicit dev of u32::MAX leaves 0 free for the implicit GPU; a
    // net dev of u32::MAX leaves no number for the auto-named port.
    assert_eq!(parse_str(inputs[11], "g").unwrap().gpus[0].dev, 0);
    assert!(parse_str(inputs[12], "g").is_err());
    assert!(parse_str(inputs[22], "g").is_err());
}

#[test]
fn every_truncation_is_ok_or_err() {
    for cut in 0..=SMALL.len() {
        if SMALL.is_char_boundary(cut) {
            let r = parse_str(&SMALL[..cut], "cut.xml");
            if cut < SMALL.len() - 10 {
                assert!(r.is_err(), "cut at {cut} parsed");
            }
        }
    }
    let full = parse_str(SMALL, "x").unwrap();
    assert!(parse_str(&SMALL[..SMALL.len() - 1], "x").is_ok_and(|t| t == full));
}

#[test]
fn deep_nesting_does_not_overflow() {
    let depth = 3_000;
    let mut text = String::from("<system version=\"1\"><cpu numaid=\"0\">");
    for i in 0..depth {
        let _ = write!(
            text,
            "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\">",
            i / 256,
            i % 256
        );
    }
    text.push_str(&"</pci>".repeat(depth));
    text.push_str("</cpu></system>");
    let t = parse_str(&text, "deep").unwrap();
    assert_eq!(t.nodes.len(), depth + 1);
    let out = to_string(&t);
    assert_eq!(parse_str(&out, "deep2").unwrap(), t);
}

#[test]
fn load_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.xml");
    let t = hand_built();
    save(&t, &path).unwrap();
    assert_eq!(load(&path).unwrap(), t);
    std::fs::write(&path, "<system version=\"1\">\n<cpu/></system>").unwrap();
    match load(&path) {
        Err(TopoError::Xml { file, line, .. }) => {
            assert_eq!(file, path.display().to_string());
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    let missing = dir.path().join("nope.xml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(&err, TopoError::Io { path, .. } if *path == missing));
    assert!(err.to_string().contains("nope.xml"));
    let err = save(&t, &dir.path().join("no/such/dir.xml")).unwrap_err();
    assert!(matches!(err, TopoError::Io { .. }));
}

#[test]
fn fixtures_round_trip() {
    let Some(dir) = fixture_dir() else {
        return;
    };
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let t = load(&path).unwrap();
            assert!(
                t.warnings.is_empty(),
                "{}: {:?}",
                path.display(),
                t.warnings
            );
            assert_round_trip(&t);
            n += 1;
        }
    }
    assert!(n >= 4, "expected the four Azure fixtures, found {n}");
}

#[test]
fn fixture_ndv4() {
    let Some(t) = fixture("azure-ndv4-topo.xml") else {
        return;
    };
    assert_eq!(t.cpus.len(), 4);
    assert_eq!(t.gpus.len(), 8);
    let devs: Vec<(u32, &str)> = t.gpus.iter().map(|g| (g.dev, busid(&t, g.node))).collect();
    assert_eq!(devs[0], (0, "0001:00:00.0"));
    assert_eq!(devs[4], (4, "000b:00:00.0"));
    for (i, g) in t.gpus.iter().enumerate() {
        assert_eq!(g.dev as usize, i);
        assert_eq!(g.class, DeviceClass::Gpu);
        assert_eq!(g.sm, None);
        let parent = t.nodes[g.node].parent.unwrap();
        let sw = busid(&t, parent);
        assert!(sw.starts_with("ffff:ff:0") && sw.ends_with(".0"), "{sw}");
        assert_eq!(t.pci(parent).unwrap().class, 0x060400);
    }
    assert_eq!(t.nets.len(), 8);
    for n in &t.nets {
        assert_eq!(n.name, busid(&t, n.node));
        assert_eq!(n.kind, NetKind::Ib);
        assert!(!n.is_virtual);
    }
    let mut names: Vec<&str> = t.nets.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    let want: Vec<String> = (1..=8).map(|i| format!("010{i}:00:00.0")).collect();
    assert_eq!(names, want);
    // dev numbering = DFS order of the sorted tree.
    for (i, n) in t.nets.iter().enumerate() {
        assert_eq!(n.dev as usize, i);
    }
    assert_eq!(t.nets[0].name, "0103:00:00.0");
    // GPU dev2 (0003) shares switch ffff:ff:01.0 with 0103 and 0104, on NUMA 0.
    let g2 = &t.gpus[2];
    assert_eq!(busid(&t, g2.node), "0003:00:00.0");
    assert_eq!(t.numa_of(g2.node), 0);
    assert_eq!(t.nodes[g2.node].parent, t.nodes[t.nets[0].node].parent);
}

#[test]
fn fixture_ncv4() {
    let Some(t) = fixture("azure-ncv4-topo.xml") else {
        return;
    };
    assert_eq!(t.gpus.len(), 4);
    for (i, g) in t.gpus.iter().enumerate() {
        assert_eq!(g.dev as usize, i);
        assert_eq!(g.sm, Some(80));
        assert_eq!(g.rank, Some(i as u32));
        assert_eq!(g.gdr, Some(true));
        assert_eq!(t.numa_of(g.node), i as i32);
        let p = t.pci(g.node).unwrap();
        assert_eq!((p.link_speed.as_str(), p.link_width), ("", 0));
        assert_eq!(p.device, Some(0x20b5));
        assert_eq!(g.nvlinks.len(), 1);
        assert_eq!(g.nvlinks[0].target, p.busid);
        assert_eq!((g.nvlinks[0].count, g.nvlinks[0].tclass), (12, 0x030200));
    }
    assert_eq!(t.nets.len(), 1);
    let n = &t.nets[0];
    assert_eq!(n.name, "eth0");
    assert_eq!(n.node, t.cpus[0]);
    assert_eq!(t.cpu(n.node).unwrap().numaid, 0);
    assert_eq!(n.speed_mbps, Some(100000));
    assert!(n.is_virtual);
    assert_eq!(n.kind, NetKind::Socket);
    assert_eq!((n.dev, n.port, n.gdr), (0, Some(0), Some(false)));
    assert_eq!(n.latency.as_deref(), Some("0.000000"));
    assert_eq!((n.guid.as_deref(), n.maxconn), (Some("0x0"), Some(65536)));
    let c = t.cpu(t.cpus[3]).unwrap();
    assert_eq!(c.affinity.as_deref(), Some("ffffff00,00000000,00000000"));
    assert_eq!((c.familyid, c.modelid), (Some(175), Some(1)));
}

#[test]
fn fixture_ndv2_ndv5() {
    let Some(t) = fixture("azure-ndv2-topo.xml") else {
        return;
    };
    assert_eq!(t.gpus.len(), 8);
    assert_eq!(t.nets.len(), 1);
    assert_eq!(t.nets[0].name, "0101:00:00.0");
    assert_eq!(t.numa_of(t.nets[0].node), 0);
    assert_eq!(t.numa_of(t.gpus[7].node), 1);
    let t = fixture("azure-ndv5-topo.xml").unwrap();
    assert_eq!(t.gpus.len(), 8);
    let devs: Vec<&str> = t.gpus.iter().map(|g| busid(&t, g.node)).collect();
    assert_eq!(devs[3], "0008:00:00.0");
    assert_eq!(devs[4], "0009:00:00.0");
    let sw = t.find_busid("ffff:ff:01.0").unwrap();
    assert_eq!(t.pci(sw).unwrap().vendor, Some(0));
    assert_eq!(t.nets.len(), 8);
}

fn in_cpu(body: &str) -> String {
    format!("<system version=\"1\"><cpu numaid=\"0\">\n{body}\n</cpu></system>")
}

#[test]
fn nvlink_targets() {
    let gpu = |busid: &str, links: &str| {
        format!(
            "<pci busid=\"{busid}\" class=\"0x030200\"><gpu dev=\"{}\" sm=\"90\">{links}</gpu></pci>\n",
            &busid[6..7]
        )
    };
    let link = |target: &str, tclass: &str| {
        format!("<nvlink target=\"{target}\" count=\"18\" tclass=\"{tclass}\"/>")
    };
    // To itself (Azure NC A100 v4), to an NVSwitch that is not in the
    // file, to the invisible remote, to a GPU in NVML's 8-digit form:
    // all accepted without a word.
    let text = in_cpu(&format!(
        "{}{}",
        gpu(
            "0000:01:00.0",
            &[
                link("0000:01:00.0", "0x030200"),
                link("0000:aa:00.0", "0x068000"),
                link("fffffff:ffff:ff", "0x068000"),
                link("00000000:02:00.0", "0x030200"),
            ]
            .concat()
        ),
        gpu("0000:02:00.0", "")
    ));
    let t = parse_str(&text, "nv.xml").unwrap();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.gpus[0].nvlinks.len(), 4);
    assert_eq!(
        crate::paths::classify(&t, t.gpus[0].node, t.gpus[1].node).ptype,
        crate::model::PathType::NVL
    );
    assert_round_trip(&t);

    // A GPU-class target that is no GPU here (unknown, or a NIC): kept
    // but never a path, with a warning, as NCCL drops it.
    let text = in_cpu(&format!(
        "{}<pci busid=\"0000:03:00.0\" class=\"0x020700\"/>",
        gpu(
            "0000:01:00.0",
            &[
                link("0000:09:00.0", "0x030200"),
                link("0000:03:00.0", "0x030000")
            ]
            .concat()
        )
    ));
    let t = parse_str(&text, "nv.xml").unwrap();
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
    assert!(
        t.warnings[0].starts_with(
            "nv.xml:2: <nvlink target=\"0000:09:00.0\"> of GPU 0000:01:00.0: no GPU has this bus ID"
        ),
        "{}",
        t.warnings[0]
    );
    assert_eq!(t.gpus[0].nvlinks.len(), 2);

    // Garbage is an error naming the element and its line.
    for target in [
        "",
        "bogus",
        "0000:01:00.0;",
        "0000:01:00.0 0000:02:00.0",
        "11111111111111111",
    ] {
        let text = in_cpu(&gpu(
            "0000:01:00.0",
            &format!("\n{}", link(target, "0x030200")),
        ));
        let (line, el, reason) = xml_err(&text);
        assert_eq!((line, el.as_str()), (3, "nvlink"), "{target:?}");
        assert!(
            reason.contains(&format!("target=\"{target}\" is not a PCI bus ID")),
            "{reason}"
        );
    }
}

#[test]
fn count_limits() {
    let many = |n: usize, f: &dyn Fn(usize) -> String| -> String { (0..n).map(f).collect() };
    let busid = |i: usize| format!("{:04x}:{:02x}:00.0", 1 + (i >> 8), i & 0xff);
    // GPUs: bare leaves, or <gpu> under another class; the element that
    // goes over the limit is named.
    let text = in_cpu(&many(MAX_GPUS + 1, &|i| {
        format!("<pci busid=\"{}\" class=\"0x030200\"/>\n", busid(i))
    }));
    let (line, el, reason) = xml_err(&text);
    assert_eq!((line, el.as_str()), (MAX_GPUS + 2, "pci"));
    assert!(
        reason.starts_with("more than 4096 GPUs and accelerators (zccl's limit"),
        "{reason}"
    );
    let ok = in_cpu(&many(MAX_GPUS, &|i| {
        format!(
            "<pci busid=\"{}\" class=\"0x020000\"><gpu dev=\"{i}\" sm=\"80\"/></pci>",
            busid(i)
        )
    }));
    assert_eq!(parse_str(&ok, "x").unwrap().gpus.len(), MAX_GPUS);
    let text = ok.replace(
        "</cpu>",
        "<pci busid=\"ffff:00:00.0\" class=\"0x120000\"/></cpu>",
    );
    assert_eq!(xml_err(&text).1, "pci");
    // NICs: <net> elements and NIC leaves together.
    let nets = many(MAX_NICS - 1, &|i| {
        format!("<net name=\"n{i}\" dev=\"{i}\"/>")
    });
    let text = in_cpu(&format!(
        "<nic>{nets}</nic><pci busid=\"0000:01:00.0\" class=\"0x020000\"/>"
    ));
    assert_eq!(parse_str(&text, "x").unwrap().nets.len(), MAX_NICS);
    let text = text.replace(
        "</cpu>",
        "<pci busid=\"0000:02:00.0\" class=\"0x020000\"/></cpu>",
    );
    let (_, el, reason) = xml_err(&text);
    assert_eq!(el, "pci");
    assert!(reason.contains("more than 4096 network ports"), "{reason}");
    let text = in_cpu(&format!(
        "<nic>{nets}<net name=\"a\" dev=\"9999\"/><net name=\"b\" dev=\"9998\"/></nic>"
    ));
    assert_eq!(xml_err(&text).1, "net");
    // CPUs and <pci> elements.
    let text = format!(
        "<system version=\"1\">{}</system>",
        many(MAX_CPUS + 1, &|i| format!("<cpu numaid=\"{i}\"/>"))
    );
    let (_, el, reason) = xml_err(&text);
    assert_eq!(el, "cpu");
    assert!(reason.contains("more than 4096 <cpu> elements"), "{reason}");
    let text = in_cpu(&many(MAX_PCI + 1, &|i| {
        format!(
            "<pci busid=\"{:04x}:{:02x}:00.0\" class=\"0x060400\"/>",
            i >> 8,
            i & 0xff
        )
    }));
    let (_, el, reason) = xml_err(&text);
    assert_eq!(el, "pci");
    assert!(
        reason.contains("more than 65536 <pci> elements"),
        "{reason}"
    );
}

#[test]
fn shape_limits() {
    // Attributes per element.
    let attrs: String = (0..=MAX_ATTRIBUTES)
        .map(|i| format!(" a{i}=\"1\""))
        .collect();
    let (_, el, reason) = xml_err(&format!(
        "<system version=\"1\"><cpu numaid=\"0\"{attrs}/></system>"
    ));
    assert_eq!(
        (el.as_str(), reason.as_str()),
        ("cpu", "more than 64 attributes")
    );
    // Nesting, of known and unknown elements alike.
    let deep = format!(
        "{}{}",
        "<x>".repeat(MAX_NESTING),
        "</x>".repeat(MAX_NESTING)
    );
    let (line, el, reason) = xml_err(&in_cpu(&deep));
    assert_eq!((line, el.as_str()), (2, "x"));
    assert_eq!(reason, "elements nested more than 4096 deep");
    // A GPU or NIC at most MAX_DEVICE_DEPTH levels below its CPU; a
    // deep chain of switches alone is fine (deep_nesting_does_not_overflow).
    let chain = |n: usize, leaf: &str| {
        let open: String = (0..n)
            .map(|i| format!("<pci busid=\"0000:{i:02x}:00.0\" class=\"0x060400\">\n"))
            .collect();
        in_cpu(&format!("{open}{leaf}{}", "</pci>".repeat(n)))
    };
    let gpu = "<pci busid=\"0001:00:00.0\" class=\"0x030200\"/>";
    assert!(parse_str(&chain(MAX_DEVICE_DEPTH - 1, gpu), "x").is_ok());
    let (line, el, reason) = xml_err(&chain(MAX_DEVICE_DEPTH, gpu));
    assert_eq!((line, el.as_str()), (MAX_DEVICE_DEPTH + 2, "pci"));
    assert!(
        reason.starts_with("0001:00:00.0 is 33 <pci> levels below its <cpu>"),
        "{reason}"
    );
    let nic = "<pci busid=\"0001:00:00.0\" class=\"0x020000\"/>";
    assert!(parse_str(&chain(MAX_DEVICE_DEPTH, nic), "x").is_err());
    // Warnings: the first MAX_WARNINGS, then a count.
    let t = parse_str(&in_cpu(&"<fancy/>".repeat(250)), "w.xml").unwrap();
    assert_eq!(t.warnings.len(), MAX_WARNINGS + 1);
    assert_eq!(
        t.warnings[MAX_WARNINGS],
        "w.xml: 150 more warning(s) not shown (only the first 100 are kept)"
    );
}

#[test]
fn load_refuses_devices_and_big_files() {
    let err = load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(&err, TopoError::Refused { path, .. } if path == Path::new("/dev/zero")));
    assert_eq!(
        err.to_string(),
        "topology file /dev/zero is a character device, not a file or a pipe (it may never end)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.xml");
    let text = format!(
        "<system version=\"1\"><cpu numaid=\"0\"/></system>{}",
        " ".repeat(1000)
    );
    std::fs::write(&path, &text).unwrap();
    let n = text.len() as u64;
    assert!(load_with_limit(&path, n).is_ok());
    let err = load_with_limit(&path, n - 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "topology file {} exceeds {} bytes (ZCCL_TOPO_MAX_BYTES sets the limit)",
            path.display(),
            n - 1
        )
    );
    // Not UTF-8: an I/O error, as before.
    std::fs::write(&path, b"<system version=\"1\">\xff</system>").unwrap();
    assert!(matches!(load(&path), Err(TopoError::Io { .. })));
}

#[test]
fn load_reads_pipes_up_to_the_limit() {
    use std::io::Write;
    // A child writes to a pipe without end; /dev/fd/N is that pipe.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("while :; do printf '<system version=\"1\">'; done")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fd = {
        use std::os::fd::AsRawFd;
        child.stdout.as_ref().unwrap().as_raw_fd()
    };
    let path = PathBuf::from(format!("/dev/fd/{fd}"));
    let err = load_with_limit(&path, 64 << 10).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("exceeds 64 KiB (ZCCL_TOPO_MAX_BYTES sets the limit)"),
        "{err}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // A finite pipe under the limit is read.
    let mut child = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"<system version=\"1\"><cpu numaid=\"3\"/></system>")
        .unwrap();
    let fd = {
        use std::os::fd::AsRawFd;
        child.stdout.as_ref().unwrap().as_raw_fd()
    };
    let t = load_with_limit(Path::new(&format!("/dev/fd/{fd}")), 1 << 10).unwrap();
    assert_eq!(t.cpu(t.cpus[0]).unwrap().numaid, 3);
    let _ = child.wait();
}

#[test]
fn a_large_synthetic_file_parses() {
    let text = crate::fake::many_devices_xml(1600, 1600);
    assert!(text.len() < 500_000);
    let t = parse_str(&text, "many").unwrap();
    assert_eq!((t.gpus.len(), t.nets.len()), (1600, 1600));
    assert!(t.warnings.is_empty());
    assert!(
        to_string(&t) == text,
        "export differs from the generated file"
    );
}
