//! The strata.v1 gRPC API: messages, server traits and clients generated from
//! `strata/v1/strata.proto`.
#![forbid(unsafe_code)]

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/strata_descriptor.bin"));
