//! A TCP stream that remembers when the kernel received the bytes of its last read
//! (`SO_TIMESTAMPNS`: the software receive timestamp of the last segment read, in
//! `CLOCK_REALTIME`). The simulator decrypts and parses 10,000 streams on the servers' cores;
//! this timestamp says when a frame reached the agent's socket, before any of that work, so the
//! server's delivery can be told apart from the simulator's own lag.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::ReceiveTimestampns,
};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// `tcp`, reading with `recvmsg` to get each read's receive timestamp when asked to (a plain
/// read otherwise: `recvmsg` with its control message costs the simulator a little more per
/// frame, on the servers' cores).
#[derive(Debug)]
pub struct Stamped {
    tcp: TcpStream,
    stamps: bool,
    last: Option<SystemTime>,
}

impl Stamped {
    /// `tcp`, with receive timestamps if `stamps`.
    pub fn new(tcp: TcpStream, stamps: bool) -> io::Result<Self> {
        if stamps {
            setsockopt(&tcp, ReceiveTimestampns, &true).map_err(io::Error::from)?;
        }
        Ok(Self {
            tcp,
            stamps,
            last: None,
        })
    }

    /// When the kernel received the last segment of the latest read, if it said.
    pub fn last_received(&self) -> Option<SystemTime> {
        self.last
    }

    fn read_stamped(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let fd = self.tcp.as_raw_fd();
        let mut space = nix::cmsg_space!(TimeSpec);
        let unfilled = buf.initialize_unfilled();
        let (bytes, stamp) = self.tcp.try_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(unfilled)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty())
                .map_err(io::Error::from)?;
            let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|cmsg| match cmsg {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                    _ => None,
                })
            });
            Ok((msg.bytes, stamp))
        })?;
        if let Some(ts) = stamp {
            let since_epoch = Duration::new(
                u64::try_from(ts.tv_sec()).unwrap_or(0),
                u32::try_from(ts.tv_nsec()).unwrap_or(0),
            );
            self.last = Some(SystemTime::UNIX_EPOCH + since_epoch);
        }
        buf.advance(bytes);
        Ok(())
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamps {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.read_stamped(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
