//! Ethernet ports and their queues.
//!
//! A configured [`Port`] hands out each of its RX and TX queues once, as an
//! [`RxQueue`] or [`TxQueue`] that one worker owns: DPDK's burst calls are not
//! thread-safe on a queue, and ownership is how that is kept. Queues keep the port
//! configured; it stops when the `Port` and every queue are gone.

use std::ffi::{c_char, CStr, CString};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tarp_api::MacAddr;

use super::eal::ensure_ready;
use super::error::errno;
use super::{DpdkError, MbufBurst, Mempool, BURST};

/// A DPDK Ethernet port id.
pub type PortId = u16;

/// Most queues of each direction a port may have here (one bit each in a `u64`).
const MAX_QUEUES: u16 = 64;

/// Ports a live [`Port`] (or its queues) has configured.
static CONFIGURED: [AtomicBool; dpdk_sys::RTE_MAX_ETHPORTS as usize] =
    [const { AtomicBool::new(false) }; dpdk_sys::RTE_MAX_ETHPORTS as usize];

/// How to set a port up ([`Port::configure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConf {
    /// RX queues; with more than one, RSS spreads flows over them if the device can.
    pub rx_queues: u16,
    /// TX queues, typically one per worker.
    pub tx_queues: u16,
    /// Descriptors per RX queue (adjusted to the device's limits).
    pub rx_desc: u16,
    /// Descriptors per TX queue (adjusted to the device's limits).
    pub tx_desc: u16,
    /// MTU to set; `None` keeps the device's default.
    pub mtu: Option<u16>,
    /// Receive frames for any destination MAC address.
    pub promiscuous: bool,
    /// Ask for IPv4/UDP/TCP checksum offload on TX (if the device has all three). Off
    /// unless a caller will mark packets with [`Mbuf::set_tx_cksum`](super::Mbuf::set_tx_cksum):
    /// an enabled offload that nothing uses can cost a driver its vector TX path.
    pub tx_csum_offload: bool,
}

impl Default for PortConf {
    fn default() -> PortConf {
        PortConf {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: None,
            promiscuous: true,
            tx_csum_offload: false,
        }
    }
}

/// A port's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// The link is up.
    pub up: bool,
    /// Link speed in Mbit/s; 0 when unknown.
    pub speed_mbps: u32,
}

/// A port's counters since it started (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the device dropped for lack of RX descriptors (we polled too slowly).
    pub imissed: u64,
    /// Erroneous packets received.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures (the mempool ran dry).
    pub rx_nombuf: u64,
}

/// What the port and its queues share; dropping the last of them stops the port.
#[derive(Debug)]
struct PortState {
    id: PortId,
    rx_queues: u16,
    tx_queues: u16,
    socket: i32,
    tx_csum: bool,
    rss_hf: u64,
    started: AtomicBool,
    /// Bit q set: RX queue q is handed out.
    rx_taken: AtomicU64,
    /// Bit q set: TX queue q is handed out.
    tx_taken: AtomicU64,
}

impl Drop for PortState {
    fn drop(&mut self) {
        if self.started.swap(false, Ordering::SeqCst) {
            // SAFETY: no queue handle is left, so no thread polls the port.
            unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
        }
        CONFIGURED[usize::from(self.id)].store(false, Ordering::SeqCst);
    }
}

/// A configured and started Ethernet port.
#[derive(Debug)]
pub struct Port {
    state: Arc<PortState>,
}

impl Port {
    /// The port named `name_or_devargs`: a port the EAL already has under that name
    /// (e.g. from `--vdev net_ring0`, or a PCI address), else the device is attached
    /// now from the devargs (`rte_dev_probe`), e.g. `net_af_packet0,iface=veth0`.
    pub fn find(name_or_devargs: &str) -> Result<PortId, DpdkError> {
        ensure_ready()?;
        let not_found = |reason: String| DpdkError::NoSuchPort {
            name: name_or_devargs.to_owned(),
            reason,
        };
        let name = name_or_devargs.split(',').next().unwrap_or_default().trim();
        if name.is_empty() {
            return Err(not_found("empty name".into()));
        }
        let c_devargs =
            CString::new(name_or_devargs).map_err(|_| not_found("contains a NUL byte".into()))?;
        if let Some(id) = port_by_name(name) {
            return Ok(id);
        }
        // SAFETY: c_devargs is NUL-terminated and outlives the call; the EAL is up.
        let ret = unsafe { dpdk_sys::rte_dev_probe(c_devargs.as_ptr()) };
        if ret < 0 {
            return Err(not_found(format!(
                "probing failed: {}",
                DpdkError::from_ret("rte_dev_probe", ret)
            )));
        }
        port_by_name(name)
            .or_else(|| first_matching_port(&c_devargs))
            .ok_or_else(|| not_found("the device was probed but has no Ethernet port".into()))
    }

    /// The ids of every port the EAL has.
    pub fn available() -> Vec<PortId> {
        if ensure_ready().is_err() {
            return Vec::new();
        }
        let mut ids = Vec::new();
        // The RTE_ETH_FOREACH_DEV loop. SAFETY (both calls): only reads the port table.
        let mut id = unsafe {
            dpdk_sys::rte_eth_find_next_owned_by(0, u64::from(dpdk_sys::RTE_ETH_DEV_NO_OWNER))
        };
        while id < dpdk_sys::RTE_MAX_ETHPORTS as u64 {
            ids.push(id as PortId);
            id = unsafe {
                dpdk_sys::rte_eth_find_next_owned_by(
                    id as u16 + 1,
                    u64::from(dpdk_sys::RTE_ETH_DEV_NO_OWNER),
                )
            };
        }
        ids
    }

    /// The name DPDK knows port `id` by (e.g. `net_ring0`, `0000:01:00.0`).
    pub fn name(id: PortId) -> Option<String> {
        ensure_ready().ok()?;
        let mut buf = [0 as c_char; dpdk_sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: buf has the RTE_ETH_NAME_MAX_LEN bytes the call may write, and it
        // writes a NUL-terminated string on success.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
        (ret == 0).then(|| {
            // SAFETY: on success buf holds a NUL-terminated string.
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
    }

    /// Configures port `id` as `conf` says, with RX buffers from `pool` (best on the
    /// port's NUMA socket), and starts it.
    ///
    /// RSS over IP, UDP and TCP (as far as the device hashes them) when there is more
    /// than one RX queue; IPv4/UDP/TCP checksum offload on TX when `conf` asks for it
    /// and the device has all three ([`Port::tx_csum_offload`]).
    pub fn configure(id: PortId, conf: &PortConf, pool: &Mempool) -> Result<Port, DpdkError> {
        ensure_ready()?;
        // SAFETY: only checks the id against the port table.
        if usize::from(id) >= CONFIGURED.len()
            || unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) } != 1
        {
            return Err(DpdkError::NoSuchPort {
                name: id.to_string(),
                reason: "no such port id".into(),
            });
        }
        for (what, n) in [("RX queues", conf.rx_queues), ("TX queues", conf.tx_queues)] {
            if n == 0 || n > MAX_QUEUES {
                return Err(DpdkError::InvalidArgument(format!(
                    "port {id}: {n} {what}, want 1 to {MAX_QUEUES}"
                )));
            }
        }
        if CONFIGURED[usize::from(id)].swap(true, Ordering::SeqCst) {
            return Err(DpdkError::Busy {
                port: id,
                what: "already configured by another Port",
            });
        }
        // From here on, dropping `state` (on an error) releases the claim and stops
        // the port if it was started.
        let mut state = PortState {
            id,
            rx_queues: conf.rx_queues,
            tx_queues: conf.tx_queues,
            socket: dpdk_sys::SOCKET_ID_ANY,
            tx_csum: false,
            rss_hf: 0,
            started: AtomicBool::new(false),
            rx_taken: AtomicU64::new(0),
            tx_taken: AtomicU64::new(0),
        };

        let info = dev_info(id)?;
        if conf.rx_queues > info.max_rx_queues || conf.tx_queues > info.max_tx_queues {
            return Err(DpdkError::InvalidArgument(format!(
                "port {id}: {} RX / {} TX queues asked, the device has at most {} / {}",
                conf.rx_queues, conf.tx_queues, info.max_rx_queues, info.max_tx_queues
            )));
        }
        let mut eth_conf = dpdk_sys::rte_eth_conf::default();
        let rss_hf = u64::from(
            dpdk_sys::RTE_ETH_RSS_IP | dpdk_sys::RTE_ETH_RSS_UDP | dpdk_sys::RTE_ETH_RSS_TCP,
        ) & info.flow_type_rss_offloads;
        if conf.rx_queues > 1 && rss_hf != 0 {
            eth_conf.rxmode.mq_mode = dpdk_sys::RTE_ETH_MQ_RX_RSS;
            eth_conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
            eth_conf.rxmode.offloads |=
                u64::from(dpdk_sys::RTE_ETH_RX_OFFLOAD_RSS_HASH) & info.rx_offload_capa;
            state.rss_hf = rss_hf;
        }
        let csum = u64::from(
            dpdk_sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM
                | dpdk_sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM
                | dpdk_sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM,
        );
        if conf.tx_csum_offload && info.tx_offload_capa & csum == csum {
            eth_conf.txmode.offloads = csum;
            state.tx_csum = true;
        }
        if let Some(mtu) = conf.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(DpdkError::InvalidArgument(format!(
                    "port {id}: MTU {mtu} outside the device's {}..={}",
                    info.min_mtu, info.max_mtu
                )));
            }
            eth_conf.rxmode.mtu = u32::from(mtu);
        }

        // SAFETY: eth_conf is a fully initialised rte_eth_conf that outlives the call.
        let ret = unsafe {
            dpdk_sys::rte_eth_dev_configure(id, conf.rx_queues, conf.tx_queues, &eth_conf)
        };
        check("rte_eth_dev_configure", ret)?;
        let (mut rx_desc, mut tx_desc) = (conf.rx_desc, conf.tx_desc);
        // SAFETY: both pointers are to live u16s the call adjusts in place.
        let ret =
            unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc) };
        check("rte_eth_dev_adjust_nb_rx_tx_desc", ret)?;
        // SAFETY: id is a valid port.
        state.socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id) };
        // SOCKET_ID_ANY (-1) passes through as the unsigned "any socket" DPDK expects.
        let socket = state.socket as u32;
        for q in 0..conf.rx_queues {
            // SAFETY: the port is configured with rx_queues queues and stopped; a null
            // rxconf means the device's defaults; pool is a live mbuf pool that is
            // never freed.
            let ret = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(id, q, rx_desc, socket, ptr::null(), pool.as_ptr())
            };
            check("rte_eth_rx_queue_setup", ret)?;
        }
        for q in 0..conf.tx_queues {
            // SAFETY: as above, for TX; a null txconf means the device's defaults plus
            // the port's offloads.
            let ret =
                unsafe { dpdk_sys::rte_eth_tx_queue_setup(id, q, tx_desc, socket, ptr::null()) };
            check("rte_eth_tx_queue_setup", ret)?;
        }
        // SAFETY: the port is configured and every queue set up.
        check("rte_eth_dev_start", unsafe {
            dpdk_sys::rte_eth_dev_start(id)
        })?;
        state.started.store(true, Ordering::SeqCst);
        if conf.promiscuous {
            // SAFETY: id is a valid, started port.
            let ret = unsafe { dpdk_sys::rte_eth_promiscuous_enable(id) };
            // Some virtual devices receive everything anyway and do not implement it.
            if ret != -errno::ENOTSUP {
                check("rte_eth_promiscuous_enable", ret)?;
            }
        }
        Ok(Port {
            state: Arc::new(state),
        })
    }

    /// The port's id.
    pub fn id(&self) -> PortId {
        self.state.id
    }

    /// The NUMA socket the device is on (-1: unknown).
    pub fn socket(&self) -> i32 {
        self.state.socket
    }

    /// The NUMA socket of port `id` before it is configured (-1: unknown), so that its
    /// mempool can be made on the same socket.
    pub fn socket_of(id: PortId) -> i32 {
        // SAFETY: rte_eth_dev_socket_id only reads the port table and checks the id.
        unsafe { dpdk_sys::rte_eth_dev_socket_id(id) }
    }

    /// True if TX checksum offload (IPv4 header, UDP, TCP) is enabled: packets may
    /// leave with [`Mbuf::set_tx_cksum`](super::Mbuf::set_tx_cksum) instead of
    /// software checksums.
    pub fn tx_csum_offload(&self) -> bool {
        self.state.tx_csum
    }

    /// The RSS hash types in use (`RTE_ETH_RSS_*`), 0 when RSS is off.
    pub fn rss_hf(&self) -> u64 {
        self.state.rss_hf
    }

    /// RX queues configured.
    pub fn rx_queues(&self) -> u16 {
        self.state.rx_queues
    }

    /// TX queues configured.
    pub fn tx_queues(&self) -> u16 {
        self.state.tx_queues
    }

    /// RX queue `queue`, handed out once (again after the handle is dropped).
    pub fn rx_queue(&self, queue: u16) -> Result<RxQueue, DpdkError> {
        self.take(
            queue,
            self.state.rx_queues,
            &self.state.rx_taken,
            "RX queue already handed out",
        )?;
        Ok(RxQueue {
            port: self.state.id,
            queue,
            state: Arc::clone(&self.state),
        })
    }

    /// TX queue `queue`, handed out once (again after the handle is dropped).
    pub fn tx_queue(&self, queue: u16) -> Result<TxQueue, DpdkError> {
        self.take(
            queue,
            self.state.tx_queues,
            &self.state.tx_taken,
            "TX queue already handed out",
        )?;
        Ok(TxQueue {
            port: self.state.id,
            queue,
            state: Arc::clone(&self.state),
        })
    }

    fn take(
        &self,
        queue: u16,
        count: u16,
        taken: &AtomicU64,
        busy: &'static str,
    ) -> Result<(), DpdkError> {
        if queue >= count {
            return Err(DpdkError::InvalidArgument(format!(
                "port {}: queue {queue}, the port has {count}",
                self.state.id
            )));
        }
        if !self.state.started.load(Ordering::SeqCst) {
            return Err(DpdkError::Busy {
                port: self.state.id,
                what: "port is stopped",
            });
        }
        let bit = 1u64 << queue;
        if taken.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return Err(DpdkError::Busy {
                port: self.state.id,
                what: busy,
            });
        }
        Ok(())
    }

    /// The port's MAC address.
    pub fn mac_addr(&self) -> Result<MacAddr, DpdkError> {
        let mut addr = dpdk_sys::rte_ether_addr::default();
        // SAFETY: addr is a live rte_ether_addr the call fills in.
        check("rte_eth_macaddr_get", unsafe {
            dpdk_sys::rte_eth_macaddr_get(self.state.id, &mut addr)
        })?;
        Ok(MacAddr(addr.addr_bytes))
    }

    /// The link's state, without waiting for it to settle.
    pub fn link(&self) -> Result<LinkState, DpdkError> {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: link is a live rte_eth_link the call fills in.
        check("rte_eth_link_get_nowait", unsafe {
            dpdk_sys::rte_eth_link_get_nowait(self.state.id, &mut link)
        })?;
        let up = u32::from(link.link_status()) == dpdk_sys::RTE_ETH_LINK_UP;
        let known = up && link.link_speed != dpdk_sys::RTE_ETH_SPEED_NUM_UNKNOWN;
        Ok(LinkState {
            up,
            speed_mbps: if known { link.link_speed } else { 0 },
        })
    }

    /// The port's counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: s is a live rte_eth_stats the call fills in.
        check("rte_eth_stats_get", unsafe {
            dpdk_sys::rte_eth_stats_get(self.state.id, &mut s)
        })?;
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Stops the port. Fails with [`DpdkError::Busy`] while any queue handle is alive:
    /// a worker may still be polling it.
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        self.ensure_no_queues()?;
        if self.state.started.swap(false, Ordering::SeqCst) {
            // SAFETY: no queue handle exists, so no thread is polling the port.
            check("rte_eth_dev_stop", unsafe {
                dpdk_sys::rte_eth_dev_stop(self.state.id)
            })?;
        }
        Ok(())
    }

    /// Starts the port again after [`Port::stop`].
    pub fn start(&mut self) -> Result<(), DpdkError> {
        if !self.state.started.load(Ordering::SeqCst) {
            // SAFETY: the port is configured, its queues set up, and it is stopped.
            check("rte_eth_dev_start", unsafe {
                dpdk_sys::rte_eth_dev_start(self.state.id)
            })?;
            self.state.started.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Stops and closes the port, releasing the device. Fails with
    /// [`DpdkError::Busy`] while any queue handle is alive (the port then stops when
    /// the last one is dropped).
    pub fn close(mut self) -> Result<(), DpdkError> {
        self.stop()?;
        // SAFETY: the port is stopped and no queue handle exists.
        check("rte_eth_dev_close", unsafe {
            dpdk_sys::rte_eth_dev_close(self.state.id)
        })
    }

    fn ensure_no_queues(&self) -> Result<(), DpdkError> {
        // Only queue handles clone the Arc, and they cannot be made without &self,
        // which &mut self excludes: the count can only fall meanwhile.
        if Arc::strong_count(&self.state) > 1 {
            return Err(DpdkError::Busy {
                port: self.state.id,
                what: "queue handles are still alive",
            });
        }
        Ok(())
    }
}

/// One RX queue of a port, owned by the one worker that polls it.
#[derive(Debug)]
pub struct RxQueue {
    port: PortId,
    queue: u16,
    state: Arc<PortState>,
}

impl RxQueue {
    /// Receives into the free slots of `burst` (up to [`BURST`] in all); returns how
    /// many packets arrived.
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut MbufBurst) -> usize {
        let free = BURST - burst.len();
        // SAFETY: this handle is the only one for the queue (&mut self), so no other
        // thread polls it; the port is started while handles exist. DPDK writes at
        // most `free` owned mbufs into the free slots from len on.
        unsafe {
            let n = dpdk_sys::rte_eth_rx_burst(
                self.port,
                self.queue,
                burst.raw_slots(burst.len()),
                free as u16,
            );
            burst.grow(usize::from(n));
            usize::from(n)
        }
    }

    /// The port's id.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// The queue's index.
    pub fn queue(&self) -> u16 {
        self.queue
    }
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        self.state
            .rx_taken
            .fetch_and(!(1u64 << self.queue), Ordering::SeqCst);
    }
}

/// One TX queue of a port, owned by the one worker that sends on it.
#[derive(Debug)]
pub struct TxQueue {
    port: PortId,
    queue: u16,
    state: Arc<PortState>,
}

impl TxQueue {
    /// Offers every mbuf of `burst` to the device; returns how many it took. Those it
    /// took are gone from `burst`; those it did not are left in it, in order, still
    /// owned by the caller.
    #[inline]
    pub fn tx_burst(&mut self, burst: &mut MbufBurst) -> usize {
        let len = burst.len();
        // SAFETY: this handle is the only one for the queue (&mut self); the port is
        // started while handles exist. DPDK takes ownership of the first n mbufs it
        // returns and leaves the rest untouched, which forget_front accounts for.
        unsafe {
            let n = usize::from(dpdk_sys::rte_eth_tx_burst(
                self.port,
                self.queue,
                burst.raw_slots(0),
                len as u16,
            ));
            burst.forget_front(n);
            n
        }
    }

    /// The port's id.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// The queue's index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// True if the port offloads TX checksums (see [`Port::tx_csum_offload`]).
    pub fn tx_csum_offload(&self) -> bool {
        self.state.tx_csum
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        self.state
            .tx_taken
            .fetch_and(!(1u64 << self.queue), Ordering::SeqCst);
    }
}

/// Ok for a DPDK return of 0 or more, the errno error for a negative one.
fn check(call: &'static str, ret: i32) -> Result<(), DpdkError> {
    if ret < 0 {
        Err(DpdkError::from_ret(call, ret))
    } else {
        Ok(())
    }
}

/// The device's capabilities.
fn dev_info(id: PortId) -> Result<dpdk_sys::rte_eth_dev_info, DpdkError> {
    let mut info = MaybeUninit::<dpdk_sys::rte_eth_dev_info>::zeroed();
    // SAFETY: info is a zeroed (valid: integers and nullable pointers) rte_eth_dev_info
    // the call fills in.
    let ret = unsafe { dpdk_sys::rte_eth_dev_info_get(id, info.as_mut_ptr()) };
    check("rte_eth_dev_info_get", ret)?;
    // SAFETY: zeroed, then filled in by DPDK: every field holds a valid value.
    Ok(unsafe { info.assume_init() })
}

/// The port whose ethdev name is `name`.
fn port_by_name(name: &str) -> Option<PortId> {
    let c_name = CString::new(name).ok()?;
    let mut id: u16 = 0;
    // SAFETY: c_name is NUL-terminated and id a live u16, both outliving the call.
    let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut id) };
    (ret == 0).then_some(id)
}

/// The first port matching `devargs` (for devices whose ports are named differently).
fn first_matching_port(devargs: &CStr) -> Option<PortId> {
    let mut iter = MaybeUninit::<dpdk_sys::rte_dev_iterator>::zeroed();
    // SAFETY: iter is a zeroed iterator that init fills in and cleanup releases;
    // devargs is NUL-terminated and outlives the iteration.
    unsafe {
        if dpdk_sys::rte_eth_iterator_init(iter.as_mut_ptr(), devargs.as_ptr()) != 0 {
            return None;
        }
        let id = dpdk_sys::rte_eth_iterator_next(iter.as_mut_ptr());
        dpdk_sys::rte_eth_iterator_cleanup(iter.as_mut_ptr());
        (u32::from(id) < dpdk_sys::RTE_MAX_ETHPORTS).then_some(id)
    }
}
