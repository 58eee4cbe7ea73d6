//! The Fila gRPC contract (`proto/fila/v1`), compiled for Rust.
//!
//! Both the broker and the Rust SDK use these types; the `.proto` files are
//! the single source of truth for every language.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Package `fila.v1`.
pub mod v1 {
    tonic::include_proto!("fila.v1");
}

/// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fila_descriptor.bin"));
