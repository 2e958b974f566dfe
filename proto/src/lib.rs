//! strata's wire formats.
//!
//! - [`ipc`]: the messages that cross the process boundaries inside one appliance
//!   (postcard over `SOCK_SEQPACKET`), one enum per channel and direction.
#![forbid(unsafe_code)]

pub mod access;
pub mod calendar;
pub mod clock_model;
pub mod ipc;
pub mod ntp;
pub mod status;
