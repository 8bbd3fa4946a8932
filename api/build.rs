//! Generates the gRPC contract (`proto/tarp.proto`) when the `grpc` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "grpc")]
    {
        println!("cargo:rerun-if-changed=proto/tarp.proto");
        if let Err(e) =
            tonic_prost_build::configure().compile_protos(&["proto/tarp.proto"], &["proto"])
        {
            panic!("compiling proto/tarp.proto failed (is protoc installed? Debian: protobuf-compiler): {e}");
        }
    }
}
