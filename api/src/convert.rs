//! Conversions between the circuit types ([`crate::circuit`]) and the gRPC messages,
//! both ways.
//! Requests from the wire are checked here; a bad field becomes INVALID_ARGUMENT with
//! the field's name.

use std::net::IpAddr;

use crate::circuit::{
    ActivateRequest, Circuit, CircuitEvent, CircuitState, EventKind, Mode, PortRange, ReturnPath,
    Role,
};
use crate::grpc::v1;
use crate::grpc::{parse_ip, protocol_from_wire, ProtoError};

fn opt_string(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn opt_id(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

/// The wire form of a mode.
pub fn mode_to_wire(m: Mode) -> v1::Mode {
    match m {
        Mode::Address => v1::Mode::Address,
        Mode::Port => v1::Mode::Port,
    }
}

/// A mode from the wire.
pub fn mode_from_wire(field: &str, value: i32) -> Result<Mode, ProtoError> {
    match v1::Mode::try_from(value) {
        Ok(v1::Mode::Address) => Ok(Mode::Address),
        Ok(v1::Mode::Port) => Ok(Mode::Port),
        Ok(v1::Mode::Unspecified) => Err(ProtoError::new(field, "mode not set (address or port)")),
        Err(_) => Err(ProtoError::new(field, format!("unknown mode {value}"))),
    }
}

/// The wire form of a circuit state.
pub fn state_to_wire(s: CircuitState) -> v1::CircuitState {
    match s {
        CircuitState::Activating => v1::CircuitState::Activating,
        CircuitState::Active => v1::CircuitState::Active,
        CircuitState::Bounced => v1::CircuitState::Bounced,
        CircuitState::Releasing => v1::CircuitState::Releasing,
        CircuitState::Released => v1::CircuitState::Released,
    }
}

/// A circuit state from the wire (`None` for unspecified).
pub fn state_from_wire(field: &str, value: i32) -> Result<Option<CircuitState>, ProtoError> {
    Ok(Some(match v1::CircuitState::try_from(value) {
        Ok(v1::CircuitState::Unspecified) => return Ok(None),
        Ok(v1::CircuitState::Activating) => CircuitState::Activating,
        Ok(v1::CircuitState::Active) => CircuitState::Active,
        Ok(v1::CircuitState::Bounced) => CircuitState::Bounced,
        Ok(v1::CircuitState::Releasing) => CircuitState::Releasing,
        Ok(v1::CircuitState::Released) => CircuitState::Released,
        Err(_) => return Err(ProtoError::new(field, format!("unknown state {value}"))),
    }))
}

/// The wire form of a role.
pub fn role_to_wire(r: Role) -> v1::Role {
    match r {
        Role::Aggregator => v1::Role::Aggregator,
        Role::Demux => v1::Role::Demux,
        Role::Remux => v1::Role::Remux,
    }
}

/// A role from the wire.
pub fn role_from_wire(field: &str, value: i32) -> Result<Role, ProtoError> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Aggregator) => Ok(Role::Aggregator),
        Ok(v1::Role::Demux) => Ok(Role::Demux),
        Ok(v1::Role::Remux) => Ok(Role::Remux),
        Ok(v1::Role::Unspecified) => Err(ProtoError::new(field, "role not set")),
        Err(_) => Err(ProtoError::new(field, format!("unknown role {value}"))),
    }
}

fn ports_from_wire(port: u32, port_end: u32) -> Result<PortRange, ProtoError> {
    let first = u16::try_from(port)
        .map_err(|_| ProtoError::new("port", format!("{port} is not a port")))?;
    let last = if port_end == 0 {
        first
    } else {
        u16::try_from(port_end)
            .map_err(|_| ProtoError::new("port_end", format!("{port_end} is not a port")))?
    };
    Ok(PortRange { first, last })
}

/// An application's request from the wire.
pub fn activate_from_wire(r: &v1::ActivateRequest) -> Result<ActivateRequest, ProtoError> {
    if r.app_host.is_empty() {
        return Err(ProtoError::new("app_host", "required"));
    }
    Ok(ActivateRequest {
        region: opt_string(&r.region),
        pop: opt_string(&r.pop),
        protocol: protocol_from_wire("protocol", r.protocol)?,
        ports: ports_from_wire(r.port, r.port_end)?,
        mode: mode_from_wire("mode", r.mode)?,
        app_host: parse_ip("app_host", &r.app_host)?,
        idempotency_key: opt_string(&r.idempotency_key),
        capture: if r.capture_address.is_empty() {
            None
        } else {
            Some(parse_ip("capture_address", &r.capture_address)?)
        },
        return_path: return_from_wire("return_path", r.return_path)?,
        lease_ms: r.lease_ms,
        owner: String::new(),
    })
}

fn return_to_wire(r: ReturnPath) -> i32 {
    match r {
        ReturnPath::Asymmetric => v1::ReturnPath::Asymmetric as i32,
        ReturnPath::Symmetric => v1::ReturnPath::Symmetric as i32,
    }
}

fn return_from_wire(field: &str, v: i32) -> Result<ReturnPath, ProtoError> {
    match v1::ReturnPath::try_from(v) {
        Ok(v1::ReturnPath::Asymmetric) => Ok(ReturnPath::Asymmetric),
        Ok(v1::ReturnPath::Symmetric) => Ok(ReturnPath::Symmetric),
        Err(_) => Err(ProtoError::new(field, format!("unknown return path {v}"))),
    }
}

/// The wire form of an application's request.
pub fn activate_to_wire(r: &ActivateRequest) -> v1::ActivateRequest {
    v1::ActivateRequest {
        region: r.region.clone().unwrap_or_default(),
        pop: r.pop.clone().unwrap_or_default(),
        protocol: v1::Protocol::from(r.protocol) as i32,
        port: u32::from(r.ports.first),
        port_end: if r.ports.last == r.ports.first {
            0
        } else {
            u32::from(r.ports.last)
        },
        mode: mode_to_wire(r.mode) as i32,
        app_host: r.app_host.to_string(),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        capture_address: r.capture.map(|c| c.to_string()).unwrap_or_default(),
        return_path: return_to_wire(r.return_path),
        lease_ms: r.lease_ms,
    }
}

/// The wire form of a circuit.
pub fn circuit_to_wire(c: &Circuit) -> v1::Circuit {
    v1::Circuit {
        id: c.id,
        state: state_to_wire(c.state) as i32,
        mode: mode_to_wire(c.mode) as i32,
        protocol: v1::Protocol::from(c.protocol) as i32,
        port: u32::from(c.ports.first),
        port_end: u32::from(c.ports.last),
        capture_address: c.capture.to_string(),
        bind_address: c.bind_address().to_string(),
        app_host: c.app_host.to_string(),
        alias: c.alias.to_string(),
        region: c.region.clone(),
        pop: c.pop.clone(),
        aggregator: c.aggregator.clone(),
        line: c.line.clone(),
        demux: c.demux.clone(),
        remux: c.remux.clone(),
        generation: c.generation,
        idempotency_key: c.idempotency_key.clone().unwrap_or_default(),
        replaces: c.replaces.unwrap_or(0),
        replaced_by: c.replaced_by.unwrap_or(0),
        reason: c.reason.clone().unwrap_or_default(),
        return_path: return_to_wire(c.return_path),
        lease_ms: c.lease_ms,
        ended_at_ms: c.ended_at_ms,
        owner: c.owner.clone(),
    }
}

/// A circuit from the wire.
pub fn circuit_from_wire(c: &v1::Circuit) -> Result<Circuit, ProtoError> {
    let ip = |field: &str, text: &str| -> Result<IpAddr, ProtoError> { parse_ip(field, text) };
    Ok(Circuit {
        id: c.id,
        state: state_from_wire("state", c.state)?
            .ok_or_else(|| ProtoError::new("state", "not set"))?,
        mode: mode_from_wire("mode", c.mode)?,
        protocol: protocol_from_wire("protocol", c.protocol)?,
        ports: ports_from_wire(c.port, c.port_end)?,
        capture: ip("capture_address", &c.capture_address)?,
        alias: ip("alias", &c.alias)?,
        app_host: ip("app_host", &c.app_host)?,
        region: c.region.clone(),
        pop: c.pop.clone(),
        aggregator: c.aggregator.clone(),
        line: c.line.clone(),
        demux: c.demux.clone(),
        remux: c.remux.clone(),
        generation: c.generation,
        idempotency_key: opt_string(&c.idempotency_key),
        replaces: opt_id(c.replaces),
        replaced_by: opt_id(c.replaced_by),
        reason: opt_string(&c.reason),
        return_path: return_from_wire("return_path", c.return_path)?,
        lease_ms: c.lease_ms,
        ended_at_ms: c.ended_at_ms,
        owner: c.owner.clone(),
    })
}

/// The wire form of an event.
pub fn event_to_wire(e: &CircuitEvent) -> v1::CircuitEvent {
    let kind = match e.kind {
        EventKind::Activated => v1::circuit_event::Kind::Activated,
        EventKind::Bounced => v1::circuit_event::Kind::Bounced,
        EventKind::Released => v1::circuit_event::Kind::Released,
    };
    v1::CircuitEvent {
        kind: kind as i32,
        circuit: Some(circuit_to_wire(&e.circuit)),
        replacement: e.replacement.as_ref().map(circuit_to_wire),
        reason: e.reason.clone().unwrap_or_default(),
    }
}

/// An event from the wire.
pub fn event_from_wire(e: &v1::CircuitEvent) -> Result<CircuitEvent, ProtoError> {
    let kind = match v1::circuit_event::Kind::try_from(e.kind) {
        Ok(v1::circuit_event::Kind::Activated) => EventKind::Activated,
        Ok(v1::circuit_event::Kind::Bounced) => EventKind::Bounced,
        Ok(v1::circuit_event::Kind::Released) => EventKind::Released,
        _ => {
            return Err(ProtoError::new(
                "kind",
                format!("unknown event kind {}", e.kind),
            ))
        }
    };
    let circuit = e
        .circuit
        .as_ref()
        .ok_or_else(|| ProtoError::new("circuit", "missing"))?;
    Ok(CircuitEvent {
        kind,
        circuit: circuit_from_wire(circuit)?,
        replacement: e.replacement.as_ref().map(circuit_from_wire).transpose()?,
        reason: opt_string(&e.reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Protocol;

    #[test]
    fn activate_request_round_trip_and_checks() {
        let req = ActivateRequest {
            region: Some("eu".into()),
            pop: None,
            protocol: Protocol::Tcp,
            ports: PortRange {
                first: 4000,
                last: 4003,
            },
            mode: Mode::Port,
            app_host: "198.19.0.2".parse().unwrap(),
            idempotency_key: Some("k".into()),
            capture: None,
            return_path: ReturnPath::Symmetric,
            lease_ms: 0,
            owner: String::new(),
        };
        assert_eq!(activate_from_wire(&activate_to_wire(&req)).unwrap(), req);
        let mut wire = activate_to_wire(&req);
        wire.mode = 0;
        assert_eq!(
            activate_from_wire(&wire).unwrap_err().to_string(),
            "mode: mode not set (address or port)"
        );
        let mut wire = activate_to_wire(&req);
        wire.app_host = "app-1".into();
        assert_eq!(activate_from_wire(&wire).unwrap_err().field, "app_host");
        let mut wire = activate_to_wire(&req);
        wire.port = 65536;
        assert_eq!(activate_from_wire(&wire).unwrap_err().field, "port");
    }
}
