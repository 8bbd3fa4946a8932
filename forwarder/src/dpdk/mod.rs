//! The safe layer over `dpdk-sys`: the only place in the forwarder with `unsafe`.
//!
//! A handful of types, each owning one kind of DPDK object, in the manner of ixy.rs:
//!
//! - [`Eal`]: the environment, initialised once per process, and the lcores it runs;
//! - [`Mempool`]: a pool of packet buffers on one NUMA socket;
//! - [`Mbuf`]: one packet, owned; dropping it returns it to its pool;
//! - [`MbufBurst`]: up to [`BURST`] mbufs in a fixed array on the worker's stack;
//! - [`Port`], [`RxQueue`], [`TxQueue`]: an Ethernet device and its queues, each queue
//!   handed out once so that exactly one thread polls it;
//! - [`TxBuffer`]: a TX queue with a burst in front of it that drops, and counts,
//!   what the device would not take;
//! - [`MbufQueue`]: hands mbufs from workers to the control thread.
//!
//! Nothing on the burst path allocates, locks, logs or makes a system call.

mod burst;
mod clock;
mod eal;
mod error;
mod mbuf;
mod mempool;
mod port;
mod ring;

pub use burst::{Drain, MbufBurst, TxBuffer, BURST};
pub use clock::Clock;
pub use eal::{current_lcore, register_thread, unregister_thread, Eal};
pub use error::DpdkError;
pub use mbuf::{L4Cksum, Mbuf, TxCksum};
pub use mempool::Mempool;
pub use port::{LinkState, Port, PortConf, PortId, PortStats, RxQueue, TxQueue};
pub use ring::MbufQueue;
