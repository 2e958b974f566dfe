//! What every strata process shares.
//!
//! - [`channel`]: typed, framed `SOCK_SEQPACKET` channels with descriptor passing.
//! - [`child`]: the life of a sandboxed child, from its privilege drop to its event loop.
//! - [`logging`]: one log format for every process.
#![forbid(unsafe_code)]

pub mod channel;
pub mod child;
pub mod logging;
