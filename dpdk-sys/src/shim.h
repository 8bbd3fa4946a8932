/*
 * Helpers for what DPDK offers only as macros or thread-local variables, which
 * bindgen cannot wrap. Prefixed dpdk_sys_ so they never clash with DPDK's own names.
 */
#ifndef DPDK_SYS_SHIM_H
#define DPDK_SYS_SHIM_H

#include <stdint.h>
#include <rte_mbuf.h>

/* rte_errno of the calling thread (a per-lcore TLS macro). */
int dpdk_sys_errno(void);

/* rte_pktmbuf_mtod(m, void *): the first byte of the packet data. */
void *dpdk_sys_pktmbuf_mtod(struct rte_mbuf *m);

/* rte_pktmbuf_data_len(m): bytes in the first segment. */
uint16_t dpdk_sys_pktmbuf_data_len(const struct rte_mbuf *m);

/* rte_pktmbuf_pkt_len(m): bytes in the whole packet. */
uint32_t dpdk_sys_pktmbuf_pkt_len(const struct rte_mbuf *m);

/* m->hash.rss, the RSS hash the NIC computed (valid if RTE_MBUF_F_RX_RSS_HASH). */
uint32_t dpdk_sys_mbuf_rss_hash(const struct rte_mbuf *m);

/* m->tx_offload (the l2_len/l3_len/... bitfield word, see rte_mbuf_tx_offload()). */
void dpdk_sys_mbuf_set_tx_offload(struct rte_mbuf *m, uint64_t tx_offload);
uint64_t dpdk_sys_mbuf_tx_offload(const struct rte_mbuf *m);

#endif
