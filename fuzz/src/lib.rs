//! The bodies of zccl's fuzz targets: plain Rust, no libFuzzer.
//!
//! Each `fuzz_targets/<name>.rs` is `fuzz_target!(|data| zccl_fuzz::<name>(data))`,
//! and the main workspace's `tests/fuzz_corpus.rs` includes this very file
//! (`#[path]`) to replay `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`
//! on stable Rust. A body returns normally for every input; a panic (a failed
//! property included) is a finding.
//!
//! Besides "never panics", each body checks the codec's properties:
//! * a successful decode re-encodes to the same bytes (every field of the
//!   frame header, the hello, the routed-chunk header and the ack is a byte
//!   range, so `encode(decode(b)) == b` wherever decoding checks the
//!   reserved bytes) and re-decodes equal;
//! * what a decode accepted satisfies the bounds it promises to enforce;
//! * the topology XML a parse accepted exports to text that parses back to
//!   the same topology, and exports again to the same text.

use zccl_runtime::router::wire::{ChunkAck, ChunkHeader, HEADER_LEN};
use zccl_topology::model::Topology;
use zccl_topology::xml;
use zccl_transports::frame::{
    FRAME_HEADER_LEN, FrameHeader, FrameKind, FrameLimits, GoodbyeReason, MAX_GOODBYE_TEXT,
};
use zccl_transports::handshake::{
    Expectation, HELLO_LEN, Hello, JobSecret, Purpose, ROOT_RANK, validate,
};

/// Largest topology XML input the `topology_xml` body reads (longer inputs
/// are ignored): real topology files are a few KiB.
pub const MAX_XML_INPUT: usize = 64 << 10;

/// A little-endian cursor over the fuzz input; reads past the end give zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

// ---------------------------------------------------------------------------
// transports/src/frame.rs
// ---------------------------------------------------------------------------

/// Target `frame`: [`FrameHeader::decode`] under the default limits and
/// under limits taken from the input, and [`GoodbyeReason::decode`].
///
/// Input: the 40-byte header, then optionally `max_frame` (u32 LE) and
/// `max_message` (u64 LE); the whole input is also tried as a Goodbye payload.
pub fn frame(data: &[u8]) {
    goodbye(data);
    if data.len() < FRAME_HEADER_LEN {
        return;
    }
    let (head, rest) = data.split_at(FRAME_HEADER_LEN);
    let head: &[u8; FRAME_HEADER_LEN] = head.try_into().expect("40 bytes");
    frame_header(head, &FrameLimits::default());
    if rest.len() >= 12 {
        let mut r = Bytes(rest);
        let limits = FrameLimits {
            max_frame: r.u32(),
            max_message: r.u64(),
        };
        frame_header(head, &limits);
        // The rest of the input as the payload of a Goodbye frame.
        goodbye(r.0);
    }
}

fn frame_header(b: &[u8; FRAME_HEADER_LEN], limits: &FrameLimits) {
    let Ok(h) = FrameHeader::decode(b, limits) else {
        return;
    };
    // Every byte is a field or the checked reserved byte: exact re-encoding.
    assert_eq!(&h.encode(), b, "encode(decode(b)) != b for {h:?}");
    assert_eq!(FrameHeader::decode(&h.encode(), limits), Ok(h));
    // The bounds decode promises a reader.
    assert!(h.chunk_len <= limits.max_frame, "{h:?} {limits:?}");
    assert!(h.total_len <= limits.max_message, "{h:?} {limits:?}");
    let end = h.offset.checked_add(u64::from(h.chunk_len));
    assert!(end.is_some_and(|e| e <= h.total_len), "{h:?}");
    let single = h.offset == 0 && u64::from(h.chunk_len) == h.total_len;
    match h.kind {
        FrameKind::Heartbeat => assert!(h.total_len == 0 && h.chunk_len == 0, "{h:?}"),
        FrameKind::Control | FrameKind::Goodbye | FrameKind::Bootstrap => {
            assert!(single, "{h:?}")
        }
        FrameKind::Data => {}
    }
}

fn goodbye(b: &[u8]) {
    let Some(r) = GoodbyeReason::decode(b) else {
        return;
    };
    assert!(b.len() <= 5 + MAX_GOODBYE_TEXT);
    let enc = r.encode();
    assert!(
        enc.len() <= 5 + MAX_GOODBYE_TEXT,
        "encoded goodbye too long"
    );
    let again = GoodbyeReason::decode(&enc).expect("an encoded goodbye decodes");
    match (&r, &again) {
        (GoodbyeReason::Clean, GoodbyeReason::Clean) => assert_eq!(b, &[0u8][..]),
        (
            GoodbyeReason::Abort {
                cause_rank: r1,
                message: m1,
            },
            GoodbyeReason::Abort {
                cause_rank: r2,
                message: m2,
            },
        ) => {
            assert_eq!(r1, r2);
            // Invalid UTF-8 is replaced on decode (U+FFFD is 3 bytes), and
            // encode truncates to MAX_GOODBYE_TEXT at a char boundary: the
            // text comes back as a prefix, exactly when it fits.
            assert!(m1.starts_with(m2.as_str()), "{m1:?} vs {m2:?}");
            if m1.len() <= MAX_GOODBYE_TEXT {
                assert_eq!(m1, m2);
            }
            if std::str::from_utf8(&b[5..]).is_ok() {
                assert_eq!(enc, b, "a valid goodbye re-encodes to its bytes");
            }
            // From there on it is a fixed point.
            assert_eq!(again.encode(), enc);
        }
        _ => panic!("goodbye changed variant: {r:?} -> {again:?}"),
    }
}

// ---------------------------------------------------------------------------
// transports/src/handshake.rs
// ---------------------------------------------------------------------------

/// Target `handshake`: [`Hello::decode`] of the first 44 bytes, then
/// [`validate`] against an [`Expectation`] read from the rest; plus
/// [`JobSecret::from_hex`] of the input as text.
pub fn handshake(data: &[u8]) {
    secret_hex(data);
    if data.len() < HELLO_LEN {
        return;
    }
    let (head, rest) = data.split_at(HELLO_LEN);
    let head: &[u8; HELLO_LEN] = head.try_into().expect("44 bytes");
    let Ok(h) = Hello::decode(head) else {
        return;
    };
    assert_eq!(&h.encode(), head, "encode(decode(b)) != b for {h:?}");
    assert_eq!(Hello::decode(&h.encode()), Ok(h));

    let mut r = Bytes(rest);
    let flags = r.u8();
    let purpose = if flags & 1 == 0 {
        Purpose::Data
    } else {
        Purpose::Bootstrap
    };
    // Guessing 16 secret bytes is hopeless for the fuzzer; mostly use the
    // hello's own secret, so validation gets past the secret check.
    let secret_bytes: [u8; 16] = r.take();
    let secret = if flags & 2 == 0 {
        h.secret
    } else {
        JobSecret::from_bytes(secret_bytes)
    };
    let local_rank = if flags & 4 == 0 { h.dst_rank } else { r.u32() };
    let world_size = (flags & 8 != 0).then(|| r.u32());
    let src_rank = (flags & 16 != 0).then(|| r.u32());
    let src_range = (flags & 32 != 0).then(|| (r.u32(), r.u32()));
    let num_sockets = (flags & 64 != 0).then(|| r.u16());
    let e = Expectation {
        purpose,
        secret,
        local_rank,
        world_size,
        src_rank,
        src_range,
        num_sockets,
    };
    if validate(&h, &e).is_err() {
        return;
    }
    // What validation promises.
    assert_eq!(h.purpose, e.purpose);
    assert!(h.secret == e.secret);
    assert_eq!(h.dst_rank, e.local_rank);
    assert!(h.world_size > 0);
    if let Some(w) = e.world_size {
        assert_eq!(h.world_size, w);
    }
    if h.src_rank == ROOT_RANK {
        assert_eq!(e.purpose, Purpose::Bootstrap, "root on a data socket");
    } else {
        assert!(h.src_rank < h.world_size, "{h:?}");
    }
    if let Some(s) = e.src_rank {
        assert_eq!(h.src_rank, s);
    }
    if let Some((lo, hi)) = e.src_range {
        assert!(lo <= h.src_rank && h.src_rank < hi);
    }
    if e.purpose == Purpose::Bootstrap {
        assert!(h.src_rank == ROOT_RANK || h.dst_rank == ROOT_RANK);
    }
    if let Some(n) = e.num_sockets {
        assert_eq!(h.num_sockets, n);
        assert!(h.socket_index < n);
    }
}

fn secret_hex(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(secret) = JobSecret::from_hex(s) {
        // Only 32 hex digits are a secret: it prints back as the input.
        assert_eq!(secret.to_hex(), s.to_ascii_lowercase(), "from_hex({s:?})");
    }
    let mut b = [0u8; 16];
    for (o, i) in b.iter_mut().zip(data) {
        *o = *i;
    }
    let secret = JobSecret::from_bytes(b);
    assert!(JobSecret::from_hex(&secret.to_hex()) == Some(secret));
}

// ---------------------------------------------------------------------------
// runtime/src/router/wire.rs
// ---------------------------------------------------------------------------

/// Target `router_wire`: [`ChunkHeader::decode`] and [`ChunkAck::decode`] of
/// the whole input.
pub fn router_wire(data: &[u8]) {
    if let Ok(h) = ChunkHeader::decode(data) {
        let len = (data.len() - HEADER_LEN) as u64;
        assert!(h.index < h.chunks, "{h:?}");
        assert!(
            h.offset.checked_add(len).is_some_and(|e| e <= h.total_len),
            "{h:?} with {len} payload bytes"
        );
        let enc = h.encode();
        // Bytes 60..64 are padding, neither written nor checked.
        assert_eq!(enc[..60], data[..60], "encode(decode(b)) != b for {h:?}");
        let mut frame = enc.to_vec();
        frame.extend_from_slice(&data[HEADER_LEN..]);
        assert_eq!(ChunkHeader::decode(&frame), Ok(h));
    }
    if let Some(a) = ChunkAck::decode(data) {
        assert_eq!(a.encode(), data, "encode(decode(b)) != b for {a:?}");
    }
}

// ---------------------------------------------------------------------------
// topology/src/xml/import.rs
// ---------------------------------------------------------------------------

fn cleared(mut t: Topology) -> Topology {
    t.warnings.clear();
    t
}

/// Target `topology_xml`: [`xml::parse_str`] of the input (invalid UTF-8
/// replaced; inputs over [`MAX_XML_INPUT`] ignored). What parses must export
/// to text that parses back to the same topology (warnings aside) and exports
/// again to the same text, as the module promises.
pub fn topology_xml(data: &[u8]) {
    if data.len() > MAX_XML_INPUT {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let Ok(t) = xml::parse_str(&text, "fuzz.xml") else {
        return;
    };
    let out = xml::to_string(&t);
    let back = match xml::parse_str(&out, "export.xml") {
        Ok(back) => back,
        Err(e) => panic!("export does not parse back: {e}\n--- input\n{text}\n--- export\n{out}"),
    };
    assert_eq!(
        cleared(back.clone()),
        cleared(t),
        "export parses back to another topology\n--- input\n{text}\n--- export\n{out}"
    );
    assert_eq!(
        xml::to_string(&back),
        out,
        "export is not a fixed point\n--- input\n{text}"
    );
}
