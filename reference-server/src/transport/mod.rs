//! The transport: the listener (TCP, TLS, HTTP/1.1 and HTTP/2, graceful shutdown), the TLS
//! material, the SSE hub that holds the open event streams, the admission of new ones, and the
//! change feed of the admin event streams. Nothing here knows policies, agents or the store: the
//! listener serves the routes it is given, the hub queues the frames it is given, the feed ORs
//! the bits it is given.

pub mod admission;
mod chunked;
mod direct;
pub mod events;
pub mod feed;
pub mod hub;
mod lean;
pub mod limits;
pub mod listener;
pub mod tls;
pub mod unread;

pub use admission::{Admission, AdmissionConfig, Admitted};
pub use events::{EventBody, EventReply};
pub use feed::{Feed, WatchError, Watcher};
pub use hub::{Delivery, Frame, Hub, Subscription};
pub use limits::ConnectionLimits;
pub use listener::{Listening, PeerAddr, ServeOptions, Shutdown};
