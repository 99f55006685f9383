//! jitsudo's public formats. `audit` is the canonical encoding and hash of the audit chain:
//! a published format, so that anyone holding the events, the chain and the public key can
//! verify the log without trusting the server.

pub mod audit;

/// The jitsudo.v1 API: messages, tonic clients and servers, proto3-JSON serde.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/jitsudo.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/jitsudo.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of jitsudo.v1 (for gRPC reflection and compatibility checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jitsudo_v1_descriptor.bin"));
