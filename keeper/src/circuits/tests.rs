//! The state machine's unit tests.

use std::net::IpAddr;

use tarp_api::rules::Protocol;

use super::*;
use crate::inventory::Config;

fn inv() -> Inventory {
    Config::parse("keeper.toml", include_str!("../../examples/keeper.toml"))
        .unwrap()
        .inventory
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port_req(port: u16) -> ActivateRequest {
    ActivateRequest {
        region: Some("eu".into()),
        pop: None,
        protocol: Protocol::Tcp,
        ports: PortRange::single(port),
        mode: Mode::Port,
        app_host: ip("198.19.0.2"),
        idempotency_key: None,
        capture: None,
        return_path: ReturnPath::Asymmetric,
        lease_ms: 0,
        owner: String::new(),
    }
}

fn addr_req() -> ActivateRequest {
    ActivateRequest {
        mode: Mode::Address,
        ..port_req(4000)
    }
}

fn started(a: Activation) -> CircuitId {
    match a {
        Activation::Started(id) => id,
        other => panic!("expected a new circuit, got {other:?}"),
    }
}

/// Activates and confirms.
fn up(s: &mut Circuits, inv: &Inventory, req: &ActivateRequest) -> Circuit {
    let id = started(s.activate(inv, 256, req).unwrap());
    s.confirm(id).unwrap();
    s.get(id).unwrap().clone()
}

fn line(node: &str, line: &str) -> LineId {
    LineId {
        node: node.into(),
        line: line.into(),
    }
}

#[test]
fn activate_allocates_in_inventory_order() {
    let inv = inv();
    let mut s = Circuits::new();
    let id = started(s.activate(&inv, 256, &addr_req()).unwrap());
    let c = s.get(id).unwrap();
    assert_eq!(c.state, CircuitState::Activating);
    assert_eq!((c.capture, c.alias), (ip("203.0.113.1"), ip("198.18.0.1")));
    assert_eq!(
        (c.pop.as_str(), c.aggregator.as_str(), c.line.as_str()),
        ("ams", "pop-ams-1", "line0")
    );
    assert_eq!((c.demux.as_str(), c.remux.as_str()), ("dc-1", "dc-1"));
    assert_eq!(c.bind_address(), ip("203.0.113.1"));
    s.confirm(id).unwrap();
    assert_eq!(s.get(id).unwrap().state, CircuitState::Active);

    // An address-mode circuit holds the whole address: the next one gets the next.
    let c2 = up(
        &mut s,
        &inv,
        &ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..addr_req()
        },
    );
    assert_eq!(
        (c2.capture, c2.alias),
        (ip("203.0.113.2"), ip("198.18.0.2"))
    );
    let (dirty, _) = s.take_dirty();
    // Both are new since the last call: no earlier state.
    assert_eq!(dirty, vec![(1, None), (2, None)]);
    // The next change records what the circuit was before it.
    let before = s.get(1).cloned();
    s.begin_release(1).unwrap();
    s.finish_release(1);
    let (dirty, _) = s.take_dirty();
    assert_eq!(dirty, vec![(1, before)]);
}

#[test]
fn port_mode_shares_a_capture_address() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(&mut s, &inv, &port_req(4000));
    let b = up(
        &mut s,
        &inv,
        &ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..port_req(4000)
        },
    );
    let c = up(
        &mut s,
        &inv,
        &ActivateRequest {
            protocol: Protocol::Udp,
            ..port_req(4000)
        },
    );
    // Same port on another app host cannot share (the capture address+port is
    // taken), a different protocol can.
    assert_eq!(a.capture, ip("203.0.113.1"));
    assert_eq!(b.capture, ip("203.0.113.2"));
    assert_eq!(c.capture, a.capture);
    assert_eq!(c.alias, a.alias);
    assert_eq!(a.bind_address(), ip("198.19.0.2"));
}

#[test]
fn conflicting_activations_are_refused() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(
        &mut s,
        &inv,
        &ActivateRequest {
            ports: PortRange {
                first: 4000,
                last: 4010,
            },
            ..port_req(0)
        },
    );
    // Same app host, protocol and an overlapping port: the remux could not tell.
    let e = s.activate(&inv, 256, &port_req(4005)).unwrap_err();
    assert_eq!(
        e,
        CircuitError::AppHostPortTaken {
            app_host: ip("198.19.0.2"),
            protocol: "tcp".into(),
            ports: PortRange::single(4005),
            by: a.id
        }
    );
    // The same capture address and port twice.
    let req = ActivateRequest {
        app_host: ip("198.19.0.3"),
        capture: Some(a.capture),
        ..port_req(4010)
    };
    assert_eq!(
        s.activate(&inv, 256, &req).unwrap_err().to_string(),
        "capture address 203.0.113.1 tcp port(s) 4010 is already held by circuit 1"
    );
    // Address mode wants the whole address.
    let req = ActivateRequest {
        capture: Some(a.capture),
        ..addr_req()
    };
    assert!(matches!(
        s.activate(&inv, 256, &req),
        Err(CircuitError::CaptureTaken { by: 1, .. })
    ));
    // Unknowns.
    let req = ActivateRequest {
        region: Some("mars".into()),
        ..addr_req()
    };
    assert_eq!(
        s.activate(&inv, 256, &req).unwrap_err(),
        CircuitError::UnknownRegion("mars".into())
    );
    let req = ActivateRequest {
        app_host: ip("198.19.9.9"),
        ..addr_req()
    };
    assert_eq!(
        s.activate(&inv, 256, &req).unwrap_err(),
        CircuitError::UnknownAppHost(ip("198.19.9.9"))
    );
    let req = ActivateRequest {
        pop: Some("nyc".into()),
        ..addr_req()
    };
    assert!(matches!(
        s.activate(&inv, 256, &req),
        Err(CircuitError::PopNotInRegion { .. })
    ));
    let req = ActivateRequest {
        ports: PortRange {
            first: 1,
            last: 300,
        },
        ..port_req(0)
    };
    assert!(matches!(
        s.activate(&inv, 256, &req),
        Err(CircuitError::Invalid(_))
    ));
    // Nothing was allocated by the refusals.
    assert_eq!(s.iter().count(), 1);
}

#[test]
fn exhausted_pool() {
    let inv = inv();
    let mut s = Circuits::new();
    // nyc has 203.0.113.64/30: two usable addresses.
    let req = ActivateRequest {
        region: Some("us".into()),
        ..addr_req()
    };
    let a = up(&mut s, &inv, &req);
    let b = up(
        &mut s,
        &inv,
        &ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..req.clone()
        },
    );
    assert_eq!(
        (a.capture, b.capture),
        (ip("203.0.113.65"), ip("203.0.113.66"))
    );
    let e = s.activate(&inv, 256, &req).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no capture address available in region \"us\" for an address-mode circuit"
    );
    // Releasing one returns it to the pool, once the keeper lifts its hold (every
    // forwarder dropped it); until then it is not handed out.
    assert_eq!(s.begin_release(a.id).unwrap(), Release::Started);
    s.finish_release(a.id);
    assert!(s.is_held(a.capture));
    assert!(matches!(
        s.activate(&inv, 256, &req),
        Err(CircuitError::Exhausted { .. })
    ));
    let freed = s.take_freed();
    assert_eq!(freed.len(), 1);
    assert_eq!((freed[0].capture, freed[0].alias), (a.capture, a.alias));
    assert_eq!(freed[0].nodes, a.path());
    s.lift(&freed[0]);
    let c = up(&mut s, &inv, &req);
    assert_eq!(c.capture, a.capture);
}

#[test]
fn release_and_double_release() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(&mut s, &inv, &addr_req());
    assert_eq!(s.begin_release(a.id).unwrap(), Release::Started);
    assert_eq!(s.get(a.id).unwrap().state, CircuitState::Releasing);
    // A release in progress cannot be started again.
    assert!(matches!(
        s.begin_release(a.id),
        Err(CircuitError::WrongState { .. })
    ));
    assert_eq!(
        s.finish_release(a.id).unwrap().state,
        CircuitState::Released
    );
    // A retried release answers with the released circuit.
    match s.begin_release(a.id).unwrap() {
        Release::AlreadyReleased(c) => assert_eq!(c.state, CircuitState::Released),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.begin_release(99).unwrap_err(), CircuitError::NotFound(99));
}

#[test]
fn idempotent_retries() {
    let inv = inv();
    let mut s = Circuits::new();
    let req = ActivateRequest {
        idempotency_key: Some("job-7".into()),
        ..port_req(5000)
    };
    let id = started(s.activate(&inv, 256, &req).unwrap());
    // While it is activating a retry is told to come back.
    assert_eq!(
        s.activate(&inv, 256, &req).unwrap_err(),
        CircuitError::InProgress(id)
    );
    s.confirm(id).unwrap();
    match s.activate(&inv, 256, &req).unwrap() {
        Activation::Existing(c) => assert_eq!(c.id, id),
        other => panic!("{other:?}"),
    }
    // The same key for something else is a mistake.
    let other = ActivateRequest {
        ports: PortRange::single(5001),
        ..req.clone()
    };
    assert_eq!(
        s.activate(&inv, 256, &other).unwrap_err(),
        CircuitError::KeyMismatch {
            key: "job-7".into(),
            id
        }
    );
    assert_eq!(s.iter().count(), 1);
    // After a release the key is free again.
    s.begin_release(id).unwrap();
    s.finish_release(id);
    assert!(matches!(
        s.activate(&inv, 256, &req).unwrap(),
        Activation::Started(2)
    ));
}

#[test]
fn bounce_with_replacement_and_line_recovery() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(
        &mut s,
        &inv,
        &ActivateRequest {
            idempotency_key: Some("k".into()),
            ..port_req(4000)
        },
    );
    let b = up(
        &mut s,
        &inv,
        &ActivateRequest {
            protocol: Protocol::Udp,
            ..port_req(53)
        },
    );
    assert_eq!(a.capture, b.capture);
    s.take_dirty();

    let bounces = s.line_down(&inv, &line("pop-ams-1", "line0"), "link down");
    assert_eq!(bounces.len(), 2);
    let ra = *bounces[0].replacement.as_ref().unwrap();
    let rb = *bounces[1].replacement.as_ref().unwrap();
    let (old, new) = (s.get(a.id).unwrap(), s.get(ra).unwrap());
    assert_eq!(old.state, CircuitState::Bounced);
    assert_eq!(old.reason.as_deref(), Some("link down"));
    assert_eq!(old.replaced_by, Some(ra));
    assert_eq!(new.state, CircuitState::Activating);
    assert_eq!(new.replaces, Some(a.id));
    // Same POP, next line; both replacements share the new address again.
    assert_eq!(
        (new.line.as_str(), new.capture),
        ("line1", ip("203.0.113.17"))
    );
    assert_eq!(s.get(rb).unwrap().capture, new.capture);
    // The idempotency key followed the replacement.
    assert_eq!(new.idempotency_key.as_deref(), Some("k"));
    assert_eq!(old.idempotency_key, None);
    let (_, lines) = s.take_dirty();
    assert_eq!(lines, vec![line("pop-ams-1", "line0")]);

    // While the line is down its addresses are not handed out.
    let c = up(
        &mut s,
        &inv,
        &ActivateRequest {
            pop: Some("ams".into()),
            ..addr_req()
        },
    );
    assert_eq!(c.line, "line1");
    assert!(s.line_up(&line("pop-ams-1", "line0")));
    assert!(!s.line_up(&line("pop-ams-1", "line0")));
    // The bounced circuits' address waits for the keeper to lift it.
    for f in s.take_freed() {
        s.lift(&f);
    }
    let d = up(
        &mut s,
        &inv,
        &ActivateRequest {
            pop: Some("ams".into()),
            app_host: ip("198.19.0.3"),
            ..addr_req()
        },
    );
    assert_eq!(d.capture, ip("203.0.113.1"));
    // Bounced circuits stay bounced and are released without a push.
    assert!(matches!(
        s.begin_release(a.id).unwrap(),
        Release::Released(Circuit {
            state: CircuitState::Released,
            ..
        })
    ));
}

#[test]
fn bounce_without_replacement() {
    let inv = inv();
    let mut s = Circuits::new();
    let req = ActivateRequest {
        region: Some("us".into()),
        ..addr_req()
    };
    let a = up(&mut s, &inv, &req);
    let bounces = s.line_down(&inv, &line("pop-nyc-1", "line0"), "heartbeats lost");
    assert_eq!(bounces.len(), 1);
    assert_eq!(bounces[0].old, a.id);
    assert!(matches!(
        bounces[0].replacement,
        Err(CircuitError::Exhausted { .. })
    ));
    assert_eq!(s.get(a.id).unwrap().replaced_by, None);
    // A circuit activating on a line that went down is not confirmed.
    s.line_up(&line("pop-nyc-1", "line0"));
    let id = started(
        s.activate(
            &inv,
            256,
            &ActivateRequest {
                app_host: ip("198.19.0.3"),
                ..req
            },
        )
        .unwrap(),
    );
    s.line_down(&inv, &line("pop-nyc-1", "line0"), "link down");
    assert!(matches!(s.confirm(id), Err(CircuitError::LineDown { .. })));
    assert_eq!(s.abort(id).unwrap().id, id);
    assert!(s.get(id).is_none());
}

#[test]
fn aborting_a_replacement_leaves_the_bounced_circuit_unreplaced() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(
        &mut s,
        &inv,
        &ActivateRequest {
            idempotency_key: Some("k".into()),
            ..addr_req()
        },
    );
    let bounces = s.line_down(&inv, &line("pop-ams-1", "line0"), "link down");
    let r = *bounces[0].replacement.as_ref().unwrap();
    s.abort(r);
    let old = s.get(a.id).unwrap();
    assert_eq!(
        (old.replaced_by, old.idempotency_key.as_deref()),
        (None, Some("k"))
    );
}

#[test]
fn recover_after_restart() {
    let inv = inv();
    let mut s = Circuits::new();
    let a = up(&mut s, &inv, &addr_req());
    let b = up(
        &mut s,
        &inv,
        &ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..addr_req()
        },
    );
    let c = started(s.activate(&inv, 256, &port_req(80)).unwrap());
    s.begin_release(b.id).unwrap();
    s.line_down(&inv, &line("pop-fra-1", "line0"), "link down");

    // What the store would hand back.
    let mut restored = Circuits::restore(s.iter().cloned(), s.down_lines().clone(), s.next_id());
    let notes = restored.recover(&inv);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(restored.get(a.id).unwrap().state, CircuitState::Active);
    assert_eq!(restored.get(b.id).unwrap().state, CircuitState::Released);
    assert!(restored.get(c).is_none());
    assert!(!restored.is_up(&line("pop-fra-1", "line0")));
    // Ids are never reused.
    assert_eq!(restored.next_id(), c + 1);
}
