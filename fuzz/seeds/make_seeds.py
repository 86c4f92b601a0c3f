#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (the encodings the unit tests
use) into fuzz/corpus/<target>/seed-*. Rerun it only to rebuild a corpus from
scratch; the committed corpus is the minimised result of fuzzing from these.
Usage: python3 fuzz/seeds/make_seeds.py [path/to/shared/fixtures/topologies]"""
import os, struct, sys, glob, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")

def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

# transports/src/frame.rs: 40-byte header, then max_frame u32, max_message u64.
def frame_header(kind, dtype, channel, seq, total, offset, chunk, comm):
    return struct.pack("<BBBBIQQQII", ord("Z"), kind, dtype, 0, channel, seq, total, offset, chunk, comm)

LIM = struct.pack("<IQ", 1024, 1 << 20)
for i, h in enumerate([
    frame_header(1, 3, 9, 77, 0, 0, 0, 5),
    frame_header(1, 3, 9, 77, 5000, 4096, 904, 5),
    frame_header(2, 0, 0, 0, 17, 0, 17, 0),
    frame_header(3, 0, 0, 0, 0, 0, 0, 0),
    frame_header(4, 0, 0, 0, 1, 0, 1, 0),
    frame_header(5, 0, 0, 0, 1000, 0, 1000, 0),
]):
    put("frame", f"header-{i}", h)
    put("frame", f"header-limits-{i}", h + LIM)
put("frame", "goodbye-clean", b"\x00")
put("frame", "goodbye-abort", b"\x01" + struct.pack("<I", 3) + b"rank 3 lost")
put("frame", "goodbye-abort-norank", b"\x01" + struct.pack("<I", 0xFFFFFFFF))
put("frame", "header-goodbye", frame_header(4, 0, 0, 0, 12, 0, 12, 0) + LIM
    + b"\x01" + struct.pack("<I", 1) + ("\u00e9" * 3).encode())

# transports/src/handshake.rs: 44-byte hello, then flags and the expectation.
def hello(purpose, src, dst, world, idx, n, secret=b"\xab" * 16):
    return (b"ZCCLHELO" + struct.pack("<HBB", 2, purpose, 0) + secret
            + struct.pack("<IIIHH", src, dst, world, idx, n))

ROOT = 0xFFFFFFFF
# Data hello, expectation with world size, range (2, 4) and 2 sockets.
flags = 8 | 32 | 64
put("handshake", "data", hello(2, 3, 1, 4, 1, 2) + bytes([flags]) + b"\xab" * 16
    + struct.pack("<IIIH", 4, 2, 4, 2))
put("handshake", "data-bare", hello(2, 3, 1, 4, 1, 2))
put("handshake", "bootstrap-to-root", hello(1, 3, ROOT, 4, 0, 1) + bytes([1]))
put("handshake", "bootstrap-from-root",
    hello(1, ROOT, 3, 4, 0, 1) + bytes([1 | 8 | 16]) + b"\x00" * 16 + struct.pack("<II", 4, ROOT))
put("handshake", "secret-hex", "0f" * 16)

# runtime/src/router/wire.rs: 64-byte chunk header + payload; 23-byte ack.
def chunk(src, dst, src_nic, dst_nic, lane, comm, channel, seq, dtype, total, offset, chunks, index):
    return (struct.pack("<IBBHHHIIIIQQQII", 0x5A525445, 1, dtype, src_nic, dst_nic, lane,
                        src, dst, comm, channel, seq, total, offset, chunks, index) + b"\x00" * 4)

put("router_wire", "header", chunk(3, 9, 2, 2, 1, 4, 1, (1 << 64) - 2, 6, 1 << 33, 1 << 32, 8193, 4096)
    + b"\x00" * 100)
put("router_wire", "doc", chunk(0, 5, 1, 1, 1, 0, 0, 7, 0, 10, 8, 2, 1) + b"\x01\x02")
put("router_wire", "ack", b"\xa1" + struct.pack("<IIQIH", 1, 2, 3, 4, 5))

# topology/src/xml/import.rs: small hand-written files and the Azure fixtures.
put("topology_xml", "partial", """<system version="1">
  <cpu numaid="0" arch="x86_64">
    <pci busid="0000:17:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
    <pci busid="0000:1A:00.0" class="0x020700" link_speed="16 GT/s" link_width="16"/>
  </cpu>
</system>""")
put("topology_xml", "full", """<system version="1">
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
    <c2c/><unknown a="b"><pci/></unknown>
  </cpu>
</system>
""")
put("topology_xml", "nets", """<system version="1"><cpu numaid="0">
  <pci busid="0000:01:00.0" class="0x020000">
    <nic>
      <net name="roce0" dev="0" link_layer="Ethernet" speed="0" state="DOWN"/>
      <net name="sock0" dev="1" speed="-1" gdr="0"/>
      <net name="nodev"/>
    </nic>
  </pci>
  <pci busid="0000:02:00.0" class="0x028000"/>
  <pci busid="0000:03:00.0" class="0x020700"/>
</cpu></system>""")
put("topology_xml", "entities", """\ufeff<?xml version="1.0"?>
<!-- c --><system version=" 1 "><cpu numaid="-1" affinity="&lt;&amp;&quot;&#65;"><![CDATA[x]]></cpu></system>""")

fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "fixtures", "topologies")
for path in sorted(glob.glob(os.path.join(fixtures, "*.xml"))):
    if os.path.getsize(path) <= 16 << 10:
        shutil.copyfile(path, os.path.join(CORPUS, "topology_xml", "seed-" + os.path.basename(path)))
        os.chmod(os.path.join(CORPUS, "topology_xml", "seed-" + os.path.basename(path)), 0o644)
