//! The simulated agents' event streams, read without an HTTP client library: one TLS
//! connection and one task per stream (tokio-rustls, the response head parsed with httparse,
//! chunked bodies decoded as they come, frames cut at their blank line).
//!
//! Why not reqwest, as for the other requests: the simulator runs on the server's cores, and
//! reqwest's streaming body goes through a connection task and a channel to the task reading
//! it (two task wake-ups and several copies per frame). With 10,000 streams that cost the
//! simulator as much CPU per broadcast as the server's fan-out, which then measured the
//! simulator as much as the server. A real agent has its own machine for that work.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::stamped::Stamped;

/// The longest response head read (the server's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
/// The room made for each read.
const READ_SIZE: usize = 16 * 1024;
/// The longest frame kept while waiting for its end.
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// What every stream shares: the TLS configuration trusting the servers' certificates.
#[derive(Clone)]
pub struct StreamClient {
    tls: TlsConnector,
    /// Whether streams record when the kernel received their bytes ([`Stamped`]).
    receive_timestamps: bool,
}

impl std::fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamClient")
    }
}

/// The answer to a stream request.
#[derive(Debug)]
pub enum Opened {
    /// 2xx: the event stream.
    Stream(Box<EventStream>),
    /// 503 with this `Retry-After`.
    Busy(Duration),
    /// Another status (not 2xx, not 503).
    Refused,
}

impl StreamClient {
    /// Trusts the certificates in `pems` (PEM files' contents: the local replicas' self-signed
    /// certificate, or `--ca`) and the web PKI's roots. HTTP/1.1 only. With
    /// `receive_timestamps`, streams record when the kernel received their bytes.
    pub fn new(pems: &[Vec<u8>], receive_timestamps: bool) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.context("a certificate that does not parse")?)
                    .context("a certificate rustls refuses as a root")?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            receive_timestamps,
        })
    }

    /// `GET /api/events` on `base` (an `https://` URL) with `token`, resuming after
    /// `last_event_id` when given.
    pub async fn open(
        &self,
        base: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> Result<Opened> {
        let url = reqwest::Url::parse(base).with_context(|| format!("`{base}` is not a URL"))?;
        if url.scheme() != "https" {
            bail!("`{base}`: event streams are read over TLS only");
        }
        let host = url.host_str().context("a URL without a host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
        let mut io = self
            .tls
            .connect(name, Stamped::new(tcp, self.receive_timestamps)?)
            .await?;
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let request = format!(
            "GET {}api/events HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\n{resume}\r\n",
            url.path().trim_end_matches('/').to_owned() + "/"
        );
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;
        let mut raw = Vec::with_capacity(1024);
        let (status, retry_after, chunked, head_len) = loop {
            raw.reserve(READ_SIZE);
            if io.read_buf(&mut raw).await? == 0 {
                bail!("the server closed the connection before its answer");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&raw)? {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
                let chunked =
                    header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                break (response.code.unwrap_or_default(), retry_after, chunked, len);
            }
            if raw.len() > MAX_HEAD {
                bail!("a response head longer than {MAX_HEAD} bytes");
            }
        };
        if status == 503 {
            return Ok(Opened::Busy(Duration::from_secs(retry_after.unwrap_or(1))));
        }
        if !(200..300).contains(&status) {
            return Ok(Opened::Refused);
        }
        raw.drain(..head_len);
        Ok(Opened::Stream(Box::new(EventStream {
            io,
            raw,
            body: Vec::with_capacity(1024),
            chunk: if chunked { Chunk::Size } else { Chunk::Plain },
        })))
    }
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The body is not chunked: read until the connection ends.
    Plain,
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes of data left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    End,
    /// The last chunk was read.
    Done,
}

/// An open event stream.
pub struct EventStream {
    io: TlsStream<Stamped>,
    /// Read, not decoded yet.
    raw: Vec<u8>,
    /// Decoded body bytes not yet cut into frames.
    body: Vec<u8>,
    chunk: Chunk,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next frame (up to and with its blank line); `None` when the stream ended.
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            self.decode()?;
            if let Some(end) = memchr::memmem::find(&self.body, b"\n\n") {
                return Ok(Some(self.body.drain(..end + 2).collect()));
            }
            if self.chunk == Chunk::Done {
                return Ok(None);
            }
            if self.body.len() > MAX_FRAME {
                bail!("a frame longer than {MAX_FRAME} bytes");
            }
            // Room for a whole TLS record (a Vec grows by 64 bytes otherwise).
            self.raw.reserve(READ_SIZE);
            if self.io.read_buf(&mut self.raw).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// When the kernel received the bytes of the latest read (the end of the frame just
    /// returned, when it came in one read), before the simulator decrypted them.
    pub fn received(&self) -> Option<SystemTime> {
        self.io.get_ref().0.last_received()
    }

    /// Moves what `raw` holds of the body into `body`.
    fn decode(&mut self) -> Result<()> {
        loop {
            match self.chunk {
                Chunk::Plain => {
                    self.body.append(&mut self.raw);
                    return Ok(());
                }
                Chunk::Done => return Ok(()),
                Chunk::Size => match httparse::parse_chunk_size(&self.raw) {
                    Ok(httparse::Status::Complete((len, 0))) => {
                        self.raw.drain(..len);
                        self.chunk = Chunk::Done;
                    }
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.raw.drain(..len);
                        self.chunk = Chunk::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(()),
                    Err(_) => bail!("a chunk size that does not parse"),
                },
                Chunk::Data(left) => {
                    if self.raw.is_empty() {
                        return Ok(());
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.raw.len());
                    self.body.extend(self.raw.drain(..take));
                    let left = left - u64::try_from(take).unwrap_or(left);
                    self.chunk = if left == 0 {
                        Chunk::End
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::End => {
                    if self.raw.len() < 2 {
                        return Ok(());
                    }
                    if self.raw.get(..2) != Some(b"\r\n".as_slice()) {
                        bail!("a chunk not ended by CRLF");
                    }
                    self.raw.drain(..2);
                    self.chunk = Chunk::Size;
                }
            }
        }
    }
}
