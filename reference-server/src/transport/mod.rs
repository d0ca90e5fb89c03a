//! The transport: the listener (TCP, TLS, HTTP/1.1 and HTTP/2, graceful shutdown), the TLS
//! material, and the SSE hub that holds the open event streams. Nothing here knows policies,
//! agents or the store: the listener serves the routes it is given, the hub queues the frames
//! it is given.

pub mod hub;
pub mod limits;
pub mod listener;
pub mod tls;

pub use hub::{Delivery, Frame, Hub, Subscription};
pub use limits::ConnectionLimits;
pub use listener::{Listening, PeerAddr, ServeOptions, Shutdown};
