#include <rte_errno.h>
#include <rte_mbuf.h>

#include "shim.h"

int dpdk_sys_errno(void) { return rte_errno; }

void *dpdk_sys_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t dpdk_sys_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t dpdk_sys_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint32_t dpdk_sys_mbuf_rss_hash(const struct rte_mbuf *m) { return m->hash.rss; }

void dpdk_sys_mbuf_set_tx_offload(struct rte_mbuf *m, uint64_t tx_offload) { m->tx_offload = tx_offload; }

uint64_t dpdk_sys_mbuf_tx_offload(const struct rte_mbuf *m) { return m->tx_offload; }
