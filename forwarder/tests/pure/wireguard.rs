//! WireGuard between a tarp aggregator and a tarp demux, through the real pipelines and
//! two `WgEngine`s (boringtun underneath): the handshake, a circuit's packets sealed at
//! the POP and opened and demultiplexed at the DC (IPv4 and IPv6 inside), and what must
//! not pass (tampered, replayed, unknown peers, plaintext VXLAN from the peer's address).

use crate::support::*;
use forwarder::pipeline::{process_inner, DropReason, PacketBuf, VecBuf, Verdict, WgJob};
use forwarder::wg::{Opened, WgEngine};
use tarp_api::rules::WgKey;

const AGG_KEY: [u8; 32] = [0x11; 32];
const DMX_KEY: [u8; 32] = [0x22; 32];

fn public(private: [u8; 32]) -> String {
    WgKey(WgEngine::new(private).public_key()).to_string()
}

fn alloc(len: usize) -> Option<VecBuf> {
    Some(VecBuf::new(&vec![0u8; len]))
}

fn agg() -> Box_ {
    wg_aggregator(&public(DMX_KEY))
}

fn dmx() -> Box_ {
    wg_demux(&public(AGG_KEY))
}

/// Opens `f` at `bx` as the worker does: the pipeline's verdict, then the engine.
fn open(bx: &Box_, e: &mut WgEngine, in_port: u16, f: &[u8]) -> Opened<VecBuf> {
    let (v, _) = bx.run(in_port, f);
    assert_eq!(
        v,
        Verdict::Wg(WgJob::Open),
        "the pipeline hands it to the engine"
    );
    e.sync(&bx.snap);
    e.open(&bx.snap, in_port, f, alloc)
}

fn reply(o: Opened<VecBuf>) -> (u16, Vec<u8>) {
    match o {
        Opened::Reply(p, f) => (p, f.data().to_vec()),
        Opened::Inner(_) => panic!("inner, not a reply"),
        Opened::Nothing => panic!("nothing, not a reply"),
        Opened::Drop(r) => panic!("dropped: {r:?}"),
    }
}

fn dropped(o: Opened<VecBuf>) -> DropReason {
    match o {
        Opened::Drop(r) => r,
        _ => panic!("not dropped"),
    }
}

/// The aggregator starts the handshake; both ends have a session afterwards.
fn handshake(a: &Box_, ae: &mut WgEngine, d: &Box_, de: &mut WgEngine) {
    let mut sent = Vec::new();
    ae.tick(&a.snap, alloc, |p, f| sent.push((p, f.data().to_vec())));
    assert_eq!(sent.len(), 1, "one initiation");
    let (p, init) = &sent[0];
    assert_eq!(*p, 1, "out of the uplink");
    assert_eq!(init.len(), 42 + 148);
    check_checksums(init).unwrap();
    let (p, resp) = reply(open(d, de, 0, init));
    assert_eq!(
        (p, resp.len()),
        (0, 42 + 92),
        "the response goes back out of tun"
    );
    let (p, keepalive) = reply(open(a, ae, 1, &resp));
    assert_eq!((p, keepalive.len()), (1, 42 + 32), "the initiator confirms");
    assert!(matches!(open(d, de, 0, &keepalive), Opened::Nothing));
    assert!(ae.peers().all(|p| p.established) && de.peers().all(|p| p.established));
}

fn device_packet(dst: &str, payload: &[u8]) -> Vec<u8> {
    let src = if dst.contains(':') {
        "2001:db8:51::10"
    } else {
        "198.51.100.10"
    };
    frame(
        ROUTER,
        AGG_LINE,
        ip(src),
        ip(dst),
        64,
        L4::Udp,
        5555,
        4000,
        payload,
    )
}

/// Aggregator: pipeline, then seal.
fn seal(a: &Box_, ae: &mut WgEngine, f: &[u8]) -> Result<Vec<u8>, DropReason> {
    let (v, rewritten) = a.run(0, f);
    let Verdict::Wg(WgJob::Seal(t)) = v else {
        panic!("not for the tunnel: {v:?}");
    };
    ae.sync(&a.snap);
    let (p, out) = ae.seal(&a.snap, t, &rewritten, 14, alloc)?;
    assert_eq!(p, 1);
    Ok(out.data().to_vec())
}

#[test]
fn a_circuit_through_wireguard_both_families_inside() {
    let (a, d) = (agg(), dmx());
    assert_eq!(a.snap.tunnels[0].inner_mtu, 1440, "1500 - 60");
    let (mut ae, mut de) = (WgEngine::new(AGG_KEY), WgEngine::new(DMX_KEY));
    handshake(&a, &mut ae, &d, &mut de);
    for (dst, app) in [
        ("203.0.113.4", "198.19.0.2"),
        ("2001:db8:113::4", "2001:db8:19::2"),
    ] {
        let payload: Vec<u8> = (0..1000).map(|i| (i * 13) as u8).collect();
        let f = device_packet(dst, &payload);
        let sealed = seal(&a, &mut ae, &f).unwrap();
        let ip_len = f.len() - 14;
        assert_eq!(
            sealed.len(),
            42 + 32 + ip_len,
            "outer + WireGuard data header and tag"
        );
        let (s, t, _) = check_checksums(&sealed).unwrap();
        assert_eq!((s, t), (ip("192.0.2.1"), ip("192.0.2.2")));
        assert_eq!(&sealed[34..38], &[0xca, 0x6c, 0xca, 0x6c], "51820 -> 51820");
        assert!(
            !sealed.windows(64).any(|w| w == &payload[100..164]),
            "the payload does not cross in the clear"
        );
        let Opened::Inner(mut inner) = open(&d, &mut de, 0, &sealed) else {
            panic!("not opened");
        };
        let mut v = [Verdict::SlowPath];
        process_inner(
            &d.snap,
            &mut d.ctx.borrow_mut(),
            0,
            std::slice::from_mut(&mut inner),
            &mut v,
        );
        assert_eq!(v[0], Verdict::Forward(1), "to the app host's port");
        let out = inner.data();
        let (s, t, ttl) = check_checksums(out).unwrap();
        let device = if dst.contains(':') {
            "2001:db8:51::10"
        } else {
            "198.51.100.10"
        };
        assert_eq!(
            (s, t, ttl),
            (ip(device), ip(app), 62),
            "rewritten, TTL down by two hops"
        );
        assert_eq!(&out[0..6], &mac(APP2).0);
        assert!(out.ends_with(&payload), "the payload arrived whole");
    }
}

#[test]
fn tampered_replayed_and_unknown_are_dropped_and_named() {
    let (a, d) = (agg(), dmx());
    let (mut ae, mut de) = (WgEngine::new(AGG_KEY), WgEngine::new(DMX_KEY));
    handshake(&a, &mut ae, &d, &mut de);
    let sealed = seal(&a, &mut ae, &device_packet("203.0.113.4", b"once")).unwrap();
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        dropped(open(&d, &mut de, 0, &tampered)),
        DropReason::WgBadMac
    );
    // A tampered counter far ahead fails the tag and must not move the window.
    let mut ahead = sealed.clone();
    ahead[42 + 8 + 3] ^= 0x10;
    *ahead.last_mut().unwrap() ^= 1;
    assert_eq!(dropped(open(&d, &mut de, 0, &ahead)), DropReason::WgBadMac);
    assert!(
        matches!(open(&d, &mut de, 0, &sealed), Opened::Inner(_)),
        "the real one"
    );
    assert_eq!(dropped(open(&d, &mut de, 0, &sealed)), DropReason::WgReplay);
    let mut unknown = sealed.clone();
    unknown[42 + 4..42 + 8].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    assert_eq!(
        dropped(open(&d, &mut de, 0, &unknown)),
        DropReason::WgUnknownPeer
    );
    // An initiation from an endpoint that is no peer's costs no Diffie-Hellman.
    let mut sent = Vec::new();
    let mut stranger = WgEngine::new([0x33; 32]);
    stranger.sync(&a.snap);
    stranger.tick(&a.snap, alloc, |_, f| sent.push(f.data().to_vec()));
    let mut init = sent.pop().unwrap();
    init[26..30].copy_from_slice(&[192, 0, 2, 99]);
    fix_ipv4_header_checksum(&mut init, 14);
    assert_eq!(
        dropped(open(&d, &mut de, 0, &init)),
        DropReason::WgUnknownPeer
    );
    // From the right endpoint but made with another key: mac1 passes (it needs only the
    // responder's public key), the static key does not.
    let init = sent_init(&a, &mut stranger);
    assert_eq!(
        dropped(open(&d, &mut de, 0, &init)),
        DropReason::WgUnknownPeer
    );
    // VXLAN in the clear from the WireGuard peer's address is no tunnel peer's.
    let plain = vxlan(
        ip("192.0.2.1"),
        ip("192.0.2.2"),
        0,
        &device_packet("198.18.0.4", b"x"),
    );
    let mut plain = plain;
    plain[0..6].copy_from_slice(&mac(DMX_TUN).0);
    assert_eq!(d.run(0, &plain).0, Verdict::Drop(DropReason::NotTunnelPeer));
    // Still working afterwards.
    let again = seal(&a, &mut ae, &device_packet("203.0.113.4", b"twice")).unwrap();
    assert!(matches!(open(&d, &mut de, 0, &again), Opened::Inner(_)));
}

fn sent_init(a: &Box_, e: &mut WgEngine) -> Vec<u8> {
    let mut sent = Vec::new();
    // A new engine each time so that its handshake is not "in progress".
    *e = WgEngine::new([0x44; 32]);
    e.tick(&a.snap, alloc, |_, f| sent.push(f.data().to_vec()));
    sent.pop().unwrap()
}

#[test]
fn no_session_no_send_and_a_handshake_starts() {
    let (a, d) = (agg(), dmx());
    let mut ae = WgEngine::new(AGG_KEY);
    assert_eq!(
        seal(&a, &mut ae, &device_packet("203.0.113.4", b"early")),
        Err(DropReason::WgNoSession)
    );
    // The demux end has no keepalive: it starts a handshake only for data it has to send.
    let mut de = WgEngine::new(DMX_KEY);
    let mut sent = 0;
    de.tick(&d.snap, alloc, |_, _| sent += 1);
    assert_eq!(sent, 0, "the responder waits");
    let mut sent = 0;
    ae.tick(&a.snap, alloc, |_, _| sent += 1);
    assert_eq!(sent, 1, "the initiator starts");
}

#[test]
fn a_restarted_demux_starts_the_handshake_itself() {
    let (a, d) = (agg(), dmx());
    let (mut ae, mut de) = (WgEngine::new(AGG_KEY), WgEngine::new(DMX_KEY));
    handshake(&a, &mut ae, &d, &mut de);
    // The demux restarts: same key, no sessions. The POP still seals with the old one.
    let mut de = WgEngine::new(DMX_KEY);
    let mut sent = 0;
    de.tick(&d.snap, alloc, |_, _| sent += 1);
    assert_eq!(sent, 0, "nothing to do before the peer speaks");
    let old = seal(&a, &mut ae, &device_packet("203.0.113.4", b"lost")).unwrap();
    assert_eq!(
        dropped(open(&d, &mut de, 0, &old)),
        DropReason::WgUnknownPeer
    );
    let again = seal(&a, &mut ae, &device_packet("203.0.113.4", b"lost")).unwrap();
    assert_eq!(
        dropped(open(&d, &mut de, 0, &again)),
        DropReason::WgUnknownPeer
    );
    // At its next tick the demux starts one handshake (not one per packet).
    let mut sent = Vec::new();
    de.tick(&d.snap, alloc, |p, f| sent.push((p, f.data().to_vec())));
    assert_eq!(
        sent.len(),
        1,
        "one initiation for two undecryptable packets"
    );
    let (p, init) = sent.pop().unwrap();
    assert_eq!((p, init.len()), (0, 42 + 148), "out of tun, to the POP");
    let mut more = 0;
    de.tick(&d.snap, alloc, |_, _| more += 1);
    assert_eq!(more, 0, "no second initiation while one is in progress");
    let (p, resp) = reply(open(&a, &mut ae, 1, &init));
    assert_eq!((p, resp.len()), (1, 42 + 92), "the POP answers");
    let (_, keepalive) = reply(open(&d, &mut de, 0, &resp));
    assert!(matches!(open(&a, &mut ae, 1, &keepalive), Opened::Nothing));
    let sealed = seal(&a, &mut ae, &device_packet("203.0.113.4", b"back")).unwrap();
    assert!(
        matches!(open(&d, &mut de, 0, &sealed), Opened::Inner(_)),
        "the POP's next packet uses the new session"
    );
}

#[test]
fn bad_rules_name_their_key() {
    let e = forwarder::tables::Snapshot::build(
        &toml::from_str(&format!(
            r#"
            tunnels = [
              {{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", wireguard = {{ public_key = "{k}" }} }},
              {{ id = 2, local = "192.0.2.1", remote = "192.0.2.3", wireguard = {{ public_key = "{k}", listen_port = 51821 }} }},
            ]
            routes = [{{ prefix = "192.0.2.0/24", port = "uplink" }}]
            "#,
            k = public(DMX_KEY)
        ))
        .unwrap(),
        &agg().ports,
        1,
        &Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("rules.tunnels[1].wireguard.listen_port"), "{e}");
    let bad: Result<tarp_api::Rules, _> = toml::from_str(
        r#"tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", wireguard = { public_key = "c2hvcnQ=" } }]"#,
    );
    let e = bad.err().unwrap().to_string();
    assert!(e.contains("a key is 32 bytes, this is 5"), "{e}");
}

#[test]
fn arbitrary_datagrams_and_flipped_bits_never_pass_or_panic() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let (a, d) = (agg(), dmx());
    let (mut ae, mut de) = (WgEngine::new(AGG_KEY), WgEngine::new(DMX_KEY));
    handshake(&a, &mut ae, &d, &mut de);
    let mut rng = StdRng::seed_from_u64(11);
    let sealed = seal(&a, &mut ae, &device_packet("203.0.113.4", &[7; 200])).unwrap();
    let mut reasons = std::collections::BTreeSet::new();
    // Every single-bit flip of the WireGuard message (the UDP checksum is zero, so the
    // outer headers stay valid): nothing opens, nothing panics.
    for bit in 0..(sealed.len() - 42) * 8 {
        let mut f = sealed.clone();
        f[42 + bit / 8] ^= 1 << (bit % 8);
        match open(&d, &mut de, 0, &f) {
            Opened::Drop(r) => {
                reasons.insert(r);
            }
            _ => panic!("bit {bit} flipped and the message still passed"),
        }
    }
    // Random messages of every type and length, from the peer's address.
    for _ in 0..20_000 {
        let len = rng.gen_range(0..300);
        let mut m: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len >= 4 && rng.gen_bool(0.8) {
            m[0] = rng.gen_range(1..=4);
            m[1..4].fill(0);
        }
        let mut f = sealed[..42].to_vec();
        f.extend_from_slice(&m);
        let ip_len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        fix_ipv4_header_checksum(&mut f, 14);
        e_drop(&d, &mut de, &f, &mut reasons);
    }
    assert!(reasons.contains(&DropReason::WgBadMac), "{reasons:?}");
    assert!(reasons.contains(&DropReason::WgUnknownPeer), "{reasons:?}");
    assert!(reasons.contains(&DropReason::Malformed), "{reasons:?}");
    // The session survived all of it.
    let ok = seal(&a, &mut ae, &device_packet("203.0.113.4", b"still")).unwrap();
    assert!(matches!(open(&d, &mut de, 0, &ok), Opened::Inner(_)));
}

fn e_drop(
    d: &Box_,
    de: &mut WgEngine,
    f: &[u8],
    reasons: &mut std::collections::BTreeSet<DropReason>,
) {
    let (v, _) = d.run(0, f);
    if v != Verdict::Wg(WgJob::Open) {
        return; // the pipeline refused it already (it may not even parse as UDP)
    }
    de.new_round();
    match de.open(&d.snap, 0, f, alloc) {
        Opened::Drop(r) => {
            reasons.insert(r);
        }
        Opened::Inner(_) => panic!("random bytes opened"),
        // A random handshake message cannot pass mac1; nothing else may answer.
        Opened::Reply(..) => panic!("random bytes answered"),
        Opened::Nothing => panic!("random bytes consumed as a keepalive"),
    }
}
