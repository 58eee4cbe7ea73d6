//! Generates the Rust code for the Fila contract from `fila/v1/*.proto`.
//!
//! `protox` parses the .proto files in pure Rust, so building needs no
//! system `protoc`.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["fila/v1/types.proto", "fila/v1/service.proto", "fila/v1/admin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Served by gRPC reflection.
    fs::write(out_dir.join("fila_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".fila.v1.EnqueueMessage.payload")
        .bytes(".fila.v1.Message.payload")
        .compile_fds(descriptors)?;
    Ok(())
}
