//! The DPDK layer on real DPDK, with virtual devices only: `net_ring` (TX queue i
//! loops back to RX queue i), `net_null` (swallows TX, makes 64-byte packets on RX).
//!
//! The EAL initialises once per process, so every test here shares one
//! (`Eal::get_or_init`) and works on ports and mempools of its own. Needs root.
#![cfg(feature = "dpdk")]

use std::sync::Arc;

use forwarder::dpdk::{
    current_lcore, register_thread, unregister_thread, DpdkError, Eal, L4Cksum, LinkState, Mbuf,
    MbufBurst, MbufQueue, Mempool, Port, PortConf, TxBuffer, TxCksum, BURST,
};
use forwarder::pipeline::PacketBuf;

const ANY_SOCKET: i32 = -1;

fn eal() -> &'static Eal {
    let args: Vec<String> = [
        "--no-huge",
        "--no-shconf",
        "-m",
        "256",
        "--no-pci",
        "--no-telemetry",
        "-l",
        "0-1",
        "--file-prefix",
        "tarp-dpdk-vdev",
        "--log-level",
        "lib.eal:warning",
        "--vdev",
        "net_ring0",
        "--vdev",
        "net_null0",
    ]
    .map(String::from)
    .into();
    Eal::get_or_init(&args).expect("EAL init failed (these tests need root)")
}

/// A pool with no per-lcore cache, so that counts are exact whichever thread frees.
fn pool(name: &str, n: u32) -> Mempool {
    eal();
    Mempool::new(name, n, 0, ANY_SOCKET).expect("mempool")
}

/// A frame of `len` bytes whose content depends on `seed`.
fn frame(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn ring_loopback_carries_the_bytes_sent() {
    let pool = pool("t_loopback", 511);
    let start = pool.avail_count();
    let port = Port::configure(
        Port::find("net_ring0").unwrap(),
        &PortConf::default(),
        &pool,
    )
    .unwrap();
    assert_eq!(
        port.link().unwrap(),
        LinkState {
            up: true,
            speed_mbps: 10_000
        }
    );
    let (mut rx, mut tx) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());

    let frames = [frame(1, 60), frame(2, 64), frame(3, 1514)];
    let mut out = MbufBurst::new();
    for f in &frames {
        out.push(Mbuf::from_bytes(&pool, f).unwrap()).unwrap();
    }
    assert_eq!(pool.avail_count(), start - 3);
    assert_eq!(tx.tx_burst(&mut out), 3);
    assert!(out.is_empty());

    let mut got = MbufBurst::new();
    assert_eq!(rx.rx_burst(&mut got), 3);
    let received: Vec<&[u8]> = got.iter().map(|m| m.data()).collect();
    assert_eq!(
        received,
        frames.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    assert_eq!(rx.rx_burst(&mut got), 0, "nothing more was sent");

    let stats = port.stats().unwrap();
    assert_eq!((stats.opackets, stats.ipackets), (3, 3));
    drop(got);
    assert_eq!(
        pool.avail_count(),
        start,
        "every mbuf went back to the pool"
    );
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn tx_buffer_drops_and_counts_exactly_the_unsent_tail() {
    // net_ring1 is not in the EAL arguments: attached at run time from its devargs.
    let pool = pool("t_txbuf", 4095);
    let start = pool.avail_count();
    let port = Port::configure(
        Port::find("net_ring1").unwrap(),
        &PortConf::default(),
        &pool,
    )
    .unwrap();
    let mut rx = port.rx_queue(0).unwrap();
    let mut txb = TxBuffer::new(port.tx_queue(0).unwrap());

    // Nobody receives, so the ring behind the TX queue (1024 slots) fills up.
    const SENT: usize = 2000;
    let mut dropped = 0;
    for i in 0..SENT {
        dropped += txb.push(Mbuf::from_bytes(&pool, &frame(i as u8, 64)).unwrap());
    }
    dropped += txb.flush();
    assert!(txb.is_empty());
    assert_eq!(dropped as u64, txb.dropped());

    let accepted = port.stats().unwrap().opackets as usize;
    assert!(
        accepted > 0 && dropped > 0,
        "accepted {accepted}, dropped {dropped}"
    );
    assert_eq!(accepted + dropped, SENT);
    assert_eq!(
        pool.in_use_count() as usize,
        accepted,
        "dropped mbufs were freed, sent ones are in the ring"
    );

    let mut received = 0;
    let mut burst = MbufBurst::new();
    loop {
        let n = rx.rx_burst(&mut burst);
        if n == 0 {
            break;
        }
        received += n;
        burst.clear();
    }
    assert_eq!(received, accepted);
    assert_eq!(pool.avail_count(), start, "each mbuf freed exactly once");
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn null_port_counts_link_and_runtime_probe() {
    let pool = pool("t_null", 1023);
    let start = pool.avail_count();
    let id = Port::find("net_null0").unwrap();
    assert_eq!(Port::name(id).as_deref(), Some("net_null0"));
    let port = Port::configure(id, &PortConf::default(), &pool).unwrap();
    assert_eq!(
        port.link().unwrap(),
        LinkState {
            up: true,
            speed_mbps: 10_000
        }
    );
    port.mac_addr().unwrap();

    let mut txb = TxBuffer::new(port.tx_queue(0).unwrap());
    for i in 0..100 {
        assert_eq!(
            txb.push(Mbuf::from_bytes(&pool, &frame(i, 128)).unwrap()),
            0
        );
    }
    assert_eq!(txb.flush(), 0, "net_null takes everything");
    let stats = port.stats().unwrap();
    assert_eq!(stats.opackets, 100);
    assert_eq!(stats.oerrors, 0);

    // net_null's RX makes a full burst of 64-byte packets from our pool.
    let mut rx = port.rx_queue(0).unwrap();
    let mut burst = MbufBurst::new();
    assert_eq!(rx.rx_burst(&mut burst), BURST);
    assert!(burst.iter().all(|m| m.len() == 64));
    assert_eq!(port.stats().unwrap().ipackets, BURST as u64);
    drop(burst);
    assert_eq!(pool.avail_count(), start);

    // A device named in no EAL argument is probed from its devargs.
    let probed = Port::find("net_null1,size=128").unwrap();
    assert_ne!(probed, id);
    assert_eq!(
        Port::find("net_null1").unwrap(),
        probed,
        "found by name the second time"
    );
    assert!(Port::available().contains(&probed));
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn queues_are_handed_out_once_and_block_stop() {
    let pool = pool("t_queues", 255);
    let id = Port::find("net_ring2").unwrap();
    let conf = PortConf {
        rx_queues: 2,
        tx_queues: 2,
        ..PortConf::default()
    };
    let mut port = Port::configure(id, &conf, &pool).unwrap();
    assert_eq!(port.rss_hf(), 0, "net_ring has no RSS");
    assert!(matches!(
        Port::configure(id, &conf, &pool),
        Err(DpdkError::Busy { .. })
    ));

    let (mut rx1, mut tx1) = (port.rx_queue(1).unwrap(), port.tx_queue(1).unwrap());
    assert!(matches!(port.rx_queue(1), Err(DpdkError::Busy { .. })));
    assert!(matches!(
        port.tx_queue(2),
        Err(DpdkError::InvalidArgument(_))
    ));

    // net_ring pairs TX queue i with RX queue i.
    let mut burst = MbufBurst::new();
    burst
        .push(Mbuf::from_bytes(&pool, &frame(9, 80)).unwrap())
        .unwrap();
    assert_eq!(tx1.tx_burst(&mut burst), 1);
    assert_eq!(port.rx_queue(0).unwrap().rx_burst(&mut burst), 0);
    assert_eq!(rx1.rx_burst(&mut burst), 1);
    assert_eq!(burst[0].data(), frame(9, 80));

    assert!(matches!(port.stop(), Err(DpdkError::Busy { .. })));
    drop((rx1, tx1));
    port.stop().unwrap();
    assert!(
        matches!(port.rx_queue(0), Err(DpdkError::Busy { .. })),
        "stopped"
    );
    port.start().unwrap();
    port.close().unwrap();
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn prepend_and_adj_change_nothing_when_impossible() {
    let pool = pool("t_mbuf", 127);
    let start = pool.avail_count();
    let mut m = Mbuf::from_bytes(&pool, b"payload").unwrap();
    assert_eq!(m.headroom(), 128);
    assert_eq!(m.len(), 7);

    assert!(!m.prepend(129));
    assert!(!m.prepend(70_000));
    assert_eq!((m.data(), m.headroom()), (&b"payload"[..], 128));
    assert!(m.prepend(14));
    assert_eq!((m.len(), m.headroom()), (21, 114));
    m.data_mut()[..14].copy_from_slice(b"ethernet-hdr14");
    assert_eq!(m.data(), b"ethernet-hdr14payload");
    assert!(m.prepend(114));
    assert_eq!(m.headroom(), 0);
    assert!(!m.prepend(1));

    assert!(!m.adj(136));
    assert_eq!(m.len(), 135);
    assert!(m.adj(128));
    assert_eq!(m.data(), b"payload");
    assert!(m.adj(7));
    assert!(m.is_empty());
    assert!(!m.adj(1));

    assert!(m.append(3000).is_none(), "beyond the 2048-byte data room");
    assert_eq!(m.append(4).unwrap().len(), 4);
    assert_eq!(m.len(), 4);
    drop(m);
    assert_eq!(pool.avail_count(), start);
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn bursts_free_what_they_hold() {
    let pool = pool("t_burst", 127);
    let start = pool.avail_count();

    let mut burst = MbufBurst::new();
    assert!(burst.alloc_bulk(&pool, BURST));
    assert!(burst.is_full());
    assert!(!burst.alloc_bulk(&pool, 1));
    assert_eq!(pool.avail_count(), start - BURST as u32);

    // Take three out, let the drain free the rest.
    let taken: Vec<Mbuf> = burst.drain().take(3).collect();
    assert!(burst.is_empty());
    assert_eq!(pool.avail_count(), start - 3);
    for m in taken {
        burst.push(m).unwrap();
    }
    let last = burst.pop().unwrap();
    assert_eq!(burst.len(), 2);
    drop(burst);
    assert_eq!(pool.avail_count(), start - 1);
    drop(last);
    assert_eq!(pool.avail_count(), start);

    // A full queue frees what it cannot take; dropping it frees what it holds.
    let queue = MbufQueue::new(2);
    for _ in 0..3 {
        queue.push(Mbuf::alloc(&pool).unwrap());
    }
    assert_eq!(queue.len(), 2);
    assert_eq!(pool.avail_count(), start - 2);
    drop(queue.pop());
    drop(queue);
    assert_eq!(pool.avail_count(), start);
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn tx_cksum_prepares_the_headers() {
    let pool = pool("t_cksum", 127);
    // Ethernet + IPv4 (checksum field non-zero) + UDP 192.0.2.1:1234 -> 192.0.2.2:80,
    // 4 bytes of payload.
    let mut packet = vec![0u8; 14];
    packet[12..14].copy_from_slice(&[0x08, 0x00]);
    packet.extend_from_slice(&[
        0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0xab, 0xcd, 192, 0, 2, 1, 192, 0, 2, 2, //
        0x04, 0xd2, 0, 80, 0, 12, 0xff, 0xff, b'd', b'a', b't', b'a',
    ]);
    let mut m = Mbuf::from_bytes(&pool, &packet).unwrap();

    let udp = TxCksum {
        l2_len: 14,
        l3_len: 20,
        ipv6: false,
        l4: L4Cksum::Udp,
    };
    assert!(
        !m.set_tx_cksum(TxCksum { l3_len: 40, ..udp }),
        "headers past the end"
    );
    assert!(!m.set_tx_cksum(TxCksum { l2_len: 200, ..udp }));
    assert_eq!(m.data(), packet, "refused: unchanged");

    assert!(m.set_tx_cksum(udp));
    let d = m.data();
    assert_eq!(&d[24..26], &[0, 0], "IPv4 checksum zeroed for the NIC");
    // Pseudo-header sum: addresses, protocol, UDP length (not complemented).
    let words = [0xc000u32, 0x0201, 0xc000, 0x0202, 17, 12];
    let mut sum: u32 = words.iter().sum();
    sum = (sum & 0xffff) + (sum >> 16);
    assert_eq!(u16::from_be_bytes([d[40], d[41]]), sum as u16);
    assert_eq!(&d[42..], b"data");
    m.clear_tx_cksum();
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn launched_closures_run_on_the_worker_lcore() {
    let eal = eal();
    assert_eq!(eal.main_lcore(), 0);
    assert_eq!(eal.worker_lcores(), vec![1]);
    assert_eq!(eal.lcore_socket(1), Some(0));
    assert!(eal.sockets().contains(&0));

    let pool = pool("t_lcore", 127);
    let start = pool.avail_count();
    let queue = Arc::new(MbufQueue::new(4));
    let (q, p) = (Arc::clone(&queue), pool);
    eal.launch_on_lcore(1, move || {
        let mut m = Mbuf::alloc(&p).unwrap();
        m.append(1).unwrap()[0] = current_lcore().unwrap() as u8;
        assert!(q.push(m));
    })
    .unwrap();
    eal.wait_lcore(1).unwrap();
    assert_eq!(queue.pop().unwrap().data(), [1], "ran on lcore 1");
    assert_eq!(pool.avail_count(), start);

    assert!(matches!(
        eal.launch_on_lcore(0, || ()),
        Err(DpdkError::InvalidArgument(_))
    ));
    eal.launch_on_lcore(1, || panic!("a worker panics (expected by the test)"))
        .unwrap();
    assert_eq!(
        eal.wait_lcore(1),
        Err(DpdkError::LcorePanicked { lcore: 1 })
    );
    eal.launch_on_lcore(1, || ()).unwrap();
    assert_eq!(eal.wait_all(), Ok(()), "the lcore recovered");
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn non_eal_threads_register_for_an_lcore() {
    eal();
    std::thread::spawn(|| {
        assert_eq!(current_lcore(), None);
        let lcore = register_thread().unwrap();
        assert!(lcore > 1, "after the EAL's lcores 0 and 1, got {lcore}");
        assert_eq!(current_lcore(), Some(lcore));
        unregister_thread();
        assert_eq!(current_lcore(), None);
    })
    .join()
    .unwrap();
}

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn errors_say_what_was_wrong() {
    eal();
    let err = Port::find("no_such_driver0").unwrap_err();
    assert!(matches!(err, DpdkError::NoSuchPort { .. }), "{err}");
    let err = Mempool::new("a_mempool_name_far_too_long_for_dpdk", 63, 0, ANY_SOCKET).unwrap_err();
    assert!(matches!(err, DpdkError::InvalidArgument(_)), "{err}");
    Mempool::new("t_twice", 63, 0, ANY_SOCKET).unwrap();
    let err = Mempool::new("t_twice", 63, 0, ANY_SOCKET).unwrap_err();
    assert_eq!(err.errno(), Some(17), "EEXIST: {err}");
    assert!(err.to_string().contains("rte_pktmbuf_pool_create"), "{err}");
    assert_eq!(Eal::init(&[]).unwrap_err(), DpdkError::AlreadyInitialised);
}
