//! The bindings link and agree with the C side, without initialising the EAL.

use dpdk_sys::*;

#[test]
fn static_inline_wrappers_and_shim_link() {
    // A bindgen wrapper (`rte_lcore_id__extern`) reading DPDK's thread-local lcore id:
    // LCORE_ID_ANY for a thread the EAL does not know.
    assert_eq!(unsafe { rte_lcore_id() }, LCORE_ID_ANY);
    // The shim (rte_errno is a thread-local macro) and an exported function.
    assert_eq!(unsafe { dpdk_sys_errno() }, 0);
    let text = unsafe { std::ffi::CStr::from_ptr(rte_strerror(E_RTE_NO_CONFIG as i32)) };
    assert_eq!(text.to_str().unwrap(), "Missing rte_config structure");
}

#[test]
fn layouts_match_dpdk() {
    assert_eq!(std::mem::size_of::<rte_mbuf>(), 128);
    assert_eq!(std::mem::align_of::<rte_mbuf>(), 64);
    assert_eq!(RTE_PKTMBUF_HEADROOM, 128);
    // From function-like macros (RTE_BIT64), evaluated by clang.
    assert_eq!(u64::from(RTE_ETH_TX_OFFLOAD_IPV4_CKSUM), 1 << 1);
    assert_eq!(RTE_MBUF_F_TX_IPV4, 1 << 55);
}
