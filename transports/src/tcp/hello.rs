//! One frame at a time on a plain stream: the `Hello` handshake and the
//! single frames the bootstrap exchanges before a transport exists.

use super::*;

/// Reads exactly one `Hello`, failing after `timeout`.
pub async fn read_hello(stream: &mut TcpStream, timeout: Duration) -> Result<Hello, String> {
    let mut b = [0u8; HELLO_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut b)).await {
        Err(_) => Err(format!("no hello within {timeout:?}")),
        Ok(Err(e)) => Err(format!("reading hello: {e}")),
        Ok(Ok(_)) => Hello::decode(&b).map_err(|e| e.to_string()),
    }
}

/// Writes one `Hello`, failing after `timeout`.
pub async fn write_hello(
    stream: &mut TcpStream,
    hello: &Hello,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, stream.write_all(&hello.encode())).await {
        Err(_) => Err(format!("writing hello timed out after {timeout:?}")),
        Ok(r) => r.map_err(|e| format!("writing hello: {e}")),
    }
}

/// Writes one single-chunk frame of `kind` carrying `payload`.
pub async fn write_single_frame(
    stream: &mut TcpStream,
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&FrameHeader::single(kind, len).encode());
    buf.extend_from_slice(payload);
    stream.write_all(&buf).await
}

/// Reads one single-chunk frame of `kind`, enforcing `limits`; heartbeats are skipped.
pub async fn read_single_frame(
    stream: &mut TcpStream,
    kind: FrameKind,
    limits: &FrameLimits,
) -> Result<Vec<u8>, String> {
    loop {
        let mut hb = [0u8; FRAME_HEADER_LEN];
        stream
            .read_exact(&mut hb)
            .await
            .map_err(|e| format!("reading frame header: {e}"))?;
        let h = FrameHeader::decode(&hb, limits).map_err(|e| e.to_string())?;
        if h.kind == FrameKind::Heartbeat {
            continue;
        }
        if h.kind != kind {
            return Err(format!("expected a {kind:?} frame, got {:?}", h.kind));
        }
        let mut payload = vec![0u8; h.chunk_len as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("reading frame payload: {e}"))?;
        return Ok(payload);
    }
}
