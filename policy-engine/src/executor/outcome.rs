//! What came of executing an action. Reports carry it to the server, so its JSON shape is part
//! of the wire protocol and is defined there, once: [`crate::protocol::Outcome`].

pub use crate::protocol::Outcome;
