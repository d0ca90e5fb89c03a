//! What both writers of a lean stream's chunked body share (`lean.rs` writes it from its task,
//! `direct.rs` from broadcasts too): the framing's pieces, how a stream ended, and the error of
//! a write that did not finish in time.

use std::io;

use bytes::Bytes;

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

/// The size line of a chunk of `len` bytes, in uppercase hex as hyper writes it.
pub fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

/// The error of a write the client did not take within its deadline.
pub fn write_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took nothing within the write timeout",
    )
}
