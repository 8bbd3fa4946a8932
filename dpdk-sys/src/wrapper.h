/* The DPDK headers tarp binds, plus the shim's own helpers (shim.c). */
#include <rte_config.h>
#include <rte_common.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_dev.h>
#include <rte_cycles.h>
#include <rte_prefetch.h>
#include <rte_memory.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_net.h>
#include <rte_arp.h>
#include <rte_flow.h>

#include "shim.h"
