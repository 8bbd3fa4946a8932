//! Generates the DPDK bindings with bindgen and compiles C wrappers for DPDK's
//! static-inline fast path (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, ...).
//!
//! Everything comes from `pkg-config libdpdk`: the cflags are passed verbatim to both
//! clang (bindgen) and the C compiler, because they carry `-include rte_config.h` and
//! the `-march` DPDK was built for; the libs are linked as shared libraries (a shared
//! EAL loads every PMD from its plugin directory by itself).

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

const NOT_FOUND: &str = "dpdk-sys: DPDK not found; install it with: \
     apt-get install -y dpdk-dev libdpdk-dev clang libclang-dev pkg-config";

/// Types Rust cannot lay out as DPDK declares them, emitted as opaque blobs of the
/// right size and alignment: packed structs holding an `__rte_aligned(2)` member
/// (`rte_ether_addr`, an L2TPv2 bitfield union), and a packed GTP header whose
/// bitfields defeat bindgen's derives.
const OPAQUE: &[&str] = &[
    "rte_arp_hdr",
    "rte_arp_ipv4",
    "rte_l2tpv2_combined_msg_hdr",
    "rte_gtp_psc_generic_hdr",
];

/// Runs `pkg-config ARG libdpdk` and splits its output into words, or fails the build
/// with one clear line.
fn pkg_config(arg: &str) -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_owned());
    let out = Command::new(pkg_config).args([arg, "libdpdk"]).output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        _ => {
            eprintln!("{NOT_FOUND}");
            exit(1);
        }
    }
}

fn main() {
    // First, so that a machine without DPDK gets the one line and nothing else.
    let cflags = pkg_config("--cflags");
    let libs = pkg_config("--libs");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    for var in [
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("src");
    let static_fns = out_dir.join("static_fns");

    let mut builder = bindgen::Builder::default()
        .header(src_dir.join("wrapper.h").to_string_lossy())
        .clang_args(&cflags)
        .clang_arg(format!("-I{}", src_dir.display()))
        .clang_arg("-DALLOW_EXPERIMENTAL_API")
        .allowlist_function("rte_.*")
        .allowlist_function("dpdk_sys_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("LCORE_ID_ANY")
        .allowlist_var("E_RTE_.*")
        // Constants such as RTE_ETH_RSS_IP are built from function-like macros
        // (RTE_BIT64); let clang evaluate them.
        .clang_macro_fallback()
        // Its temporary header and precompiled header go to OUT_DIR, not the source tree
        // (by default they land in the working directory: dpdk-sys/).
        .clang_macro_fallback_build_dir(&out_dir)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .use_core()
        .prepend_enum_name(false)
        .derive_default(true)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for ty in OPAQUE {
        builder = builder.opaque_type(ty);
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        eprintln!("dpdk-sys: bindgen failed on the DPDK headers: {e}");
        exit(1);
    });
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs to OUT_DIR");

    // The wrappers bindgen wrote for the static-inline functions, plus our shim, built
    // with DPDK's own cflags.
    let mut cc = cc::Build::new();
    cc.file(static_fns.with_extension("c"))
        .file(src_dir.join("shim.c"))
        .include(&src_dir)
        .define("ALLOW_EXPERIMENTAL_API", None)
        // The wrappers are the fast path even in a debug build of the Rust side.
        .opt_level(3)
        // bindgen's wrappers draw a harmless "duplicate const" on every build.
        .warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.compile("dpdk_sys_wrappers");

    // After the wrappers, so that the linker sees their references first.
    for word in &libs {
        if let Some(dir) = word.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = word.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
    // Exported to dependents' build scripts as DEP_DPDK_CFLAGS.
    println!("cargo:cflags={}", cflags.join(" "));
}
