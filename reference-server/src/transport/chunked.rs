//! What both writers of a lean stream's chunked body share (`lean.rs` writes it from its task,
//! `direct.rs` from broadcasts too): the framing's pieces, how a stream ended, and the error of
//! a write that did not finish in time.

use std::io;

/// How a lean response ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The whole answer was written (a refusal, or a stream whose body ended).
    Done,
    /// The peer closed its side during the stream.
    PeerClosed,
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The CRLF ending a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The size line of a chunk (its length in uppercase hex, as hyper writes it, and CRLF), on
/// the stack: written once per stream and event, it costs no allocation.
pub struct SizeLine {
    bytes: [u8; 18],
    len: usize,
}

impl SizeLine {
    /// The size line of a chunk of `len` bytes.
    pub fn of(len: usize) -> Self {
        use std::io::Write as _;
        let mut bytes = [0u8; 18];
        let mut free = &mut bytes[..];
        // 16 hex digits and CRLF fit any `usize`.
        let _ = write!(free, "{len:X}\r\n");
        let len = 18 - free.len();
        Self { bytes, len }
    }
}

impl std::ops::Deref for SizeLine {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// The error of a write the client did not take within its deadline.
pub fn write_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took nothing within the write timeout",
    )
}
