//! Activation (the patent's FIG 3): place a request on a line and a demux alias, confirm
//! it once every forwarder runs it, or abort it.

use std::net::IpAddr;

use super::{
    index, ActivateRequest, Activation, Circuit, CircuitError, CircuitId, CircuitState, Circuits,
    LineId, Mode, NodeId, Placement, ReturnPath,
};
use crate::inventory::{Aggregator, Inventory};

impl Circuits {
    /// Starts an activation: checks the request, allocates a capture address and an
    /// alias, and records the circuit as `Activating`. A request carrying the
    /// idempotency key of a live or bounced circuit returns that circuit instead.
    pub fn activate(
        &mut self,
        inv: &Inventory,
        max_port_range: u16,
        req: &ActivateRequest,
    ) -> Result<Activation, CircuitError> {
        check_request(req, max_port_range)?;
        if let Some(key) = &req.idempotency_key {
            if let Some(c) = self.by_key(&req.owner, key) {
                if !same_request(c, req) {
                    return Err(CircuitError::KeyMismatch {
                        key: key.clone(),
                        id: c.id,
                    });
                }
                if c.state == CircuitState::Activating {
                    return Err(CircuitError::InProgress(c.id));
                }
                return Ok(Activation::Existing(Box::new(c.clone())));
            }
        }
        let id = self.start(inv, req, None)?;
        Ok(Activation::Started(id))
    }

    /// The unreleased circuit of `owner` holding an idempotency key (each owner has
    /// its own keys: another application's key names none of its circuits).
    fn by_key(&self, owner: &str, key: &str) -> Option<&Circuit> {
        let k = (owner.to_string(), key.to_string());
        self.circuits.get(self.index.keys.get(&k)?)
    }

    pub(super) fn start(
        &mut self,
        inv: &Inventory,
        req: &ActivateRequest,
        replaces: Option<CircuitId>,
    ) -> Result<CircuitId, CircuitError> {
        let app_host = inv
            .app_host(req.app_host)
            .ok_or(CircuitError::UnknownAppHost(req.app_host))?;
        let place = self.place(inv, req)?;
        if req.return_path == ReturnPath::Symmetric {
            if place.line.gateway.is_none() {
                return Err(CircuitError::NoSymmetricReturn(format!(
                    "a gateway for line {} of {} in the inventory",
                    place.line.name, place.aggregator.node
                )));
            }
            if !inv.return_locals.contains_key(&app_host.remux) {
                return Err(CircuitError::NoSymmetricReturn(format!(
                    "a tunnel_local for remux {} in the inventory",
                    app_host.remux
                )));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let circuit = Circuit {
            id,
            state: CircuitState::Activating,
            mode: req.mode,
            protocol: req.protocol,
            ports: req.ports,
            capture: place.capture,
            alias: place.alias,
            app_host: req.app_host,
            region: place.aggregator.region.clone(),
            pop: place.aggregator.pop.clone(),
            aggregator: place.aggregator.node.clone(),
            line: place.line.name.clone(),
            demux: place.aggregator.demux.clone(),
            remux: app_host.remux.clone(),
            return_path: req.return_path,
            generation: 0,
            idempotency_key: req.idempotency_key.clone(),
            replaces,
            replaced_by: None,
            reason: None,
            lease_ms: req.lease_ms,
            ended_at_ms: 0,
            owner: req.owner.clone(),
        };
        self.mark(id);
        self.index.add(&circuit);
        self.circuits.insert(id, circuit);
        Ok(id)
    }

    /// Chooses a capture address and alias for a request.
    fn place<'a>(
        &self,
        inv: &'a Inventory,
        req: &ActivateRequest,
    ) -> Result<Placement<'a>, CircuitError> {
        if req.mode == Mode::Port {
            let taken = self
                .index
                .app_ports
                .get(&(req.app_host, req.protocol))
                .and_then(|r| index::overlapping(r, req.ports));
            if let Some(by) = taken {
                return Err(CircuitError::AppHostPortTaken {
                    app_host: req.app_host,
                    protocol: req.protocol.name().into(),
                    ports: req.ports,
                    by,
                });
            }
        }
        // The alias for a capture address: the one its live circuits share, or the
        // demux pool's first free one of the same address family.
        let alias_for = |agg: &Aggregator, capture: IpAddr| -> Option<IpAddr> {
            if let Some(alias) = self.index.captures.get(&capture).and_then(|on| on.alias) {
                return Some(alias);
            }
            let used = self.index.aliases.get(&agg.demux);
            let held = self.held_aliases.get(&agg.demux);
            inv.demux(&agg.demux)?.aliases.iter().copied().find(|a| {
                a.is_ipv4() == capture.is_ipv4()
                    && !used.is_some_and(|u| u.contains_key(a))
                    && !held.is_some_and(|h| h.contains(a))
            })
        };
        // None when the capture address can take the request, else the holder.
        let conflict = |capture: IpAddr| -> Option<CircuitId> {
            self.index
                .conflict(capture, req.mode, req.protocol, req.ports)
        };

        if let Some(capture) = req.capture {
            let (agg, line) = inv
                .capture(capture)
                .ok_or(CircuitError::UnknownCapture(capture))?;
            let outside = req.region.as_ref().is_some_and(|r| *r != agg.region)
                || req.pop.as_ref().is_some_and(|p| *p != agg.pop);
            if outside {
                return Err(CircuitError::CaptureElsewhere {
                    capture,
                    pop: agg.pop.clone(),
                    region: agg.region.clone(),
                });
            }
            let line_id = LineId {
                node: agg.node.clone(),
                line: line.name.clone(),
            };
            if !self.is_up(&line_id) {
                return Err(CircuitError::LineDown {
                    capture,
                    line: line_id,
                });
            }
            if self.is_suppressed(&line_id) {
                return Err(CircuitError::LineDamped {
                    capture,
                    line: line_id,
                });
            }
            if self.is_held(capture) {
                return Err(CircuitError::CaptureHeld(capture));
            }
            if let Some(holder) = conflict(capture) {
                let what = match req.mode {
                    Mode::Address => "in address mode".to_string(),
                    Mode::Port => format!("{} port(s) {}", req.protocol.name(), req.ports),
                };
                return Err(CircuitError::CaptureTaken {
                    capture,
                    what,
                    by: holder,
                });
            }
            let alias = alias_for(agg, capture)
                .ok_or_else(|| CircuitError::AliasesExhausted(agg.demux.clone()))?;
            return Ok(Placement {
                aggregator: agg,
                line,
                capture,
                alias,
            });
        }

        let pops = self.pops_for(inv, req)?;
        // Port mode packs circuits onto capture addresses already in port mode first,
        // which keeps whole addresses (and aliases) free for address mode.
        let passes: &[bool] = match req.mode {
            Mode::Port => &[true, false],
            Mode::Address => &[false],
        };
        let mut alias_short: Option<NodeId> = None;
        for &shared in passes {
            for pop in &pops {
                for agg in inv.aggregators.iter().filter(|a| a.pop == *pop) {
                    for line in &agg.lines {
                        let id = LineId {
                            node: agg.node.clone(),
                            line: line.name.clone(),
                        };
                        if !self.is_up(&id) || self.is_suppressed(&id) {
                            continue;
                        }
                        for &capture in &line.captures {
                            if self.index.captures.contains_key(&capture) != shared
                                || conflict(capture).is_some()
                                || self.is_held(capture)
                            {
                                continue;
                            }
                            match alias_for(agg, capture) {
                                Some(alias) => {
                                    return Ok(Placement {
                                        aggregator: agg,
                                        line,
                                        capture,
                                        alias,
                                    })
                                }
                                None => alias_short = Some(agg.demux.clone()),
                            }
                        }
                    }
                }
            }
        }
        if let Some(demux) = alias_short {
            return Err(CircuitError::AliasesExhausted(demux));
        }
        let scope = match (&req.pop, &req.region) {
            (Some(p), _) => format!("POP {p:?} or its region"),
            (None, Some(r)) => format!("region {r:?}"),
            (None, None) => "any region".to_string(),
        };
        let what = match req.mode {
            Mode::Address => "an address-mode circuit".to_string(),
            Mode::Port => format!("{} port(s) {} in port mode", req.protocol.name(), req.ports),
        };
        Err(CircuitError::Exhausted { scope, what })
    }

    /// POPs to search, preferred first.
    fn pops_for(
        &self,
        inv: &Inventory,
        req: &ActivateRequest,
    ) -> Result<Vec<String>, CircuitError> {
        if let Some(region) = &req.region {
            if !inv.regions.contains(region) {
                return Err(CircuitError::UnknownRegion(region.clone()));
            }
        }
        let region = match &req.pop {
            Some(p) => {
                let pop = inv
                    .pop(p)
                    .ok_or_else(|| CircuitError::UnknownPop(p.clone()))?;
                if let Some(r) = &req.region {
                    if *r != pop.region {
                        return Err(CircuitError::PopNotInRegion {
                            pop: p.clone(),
                            region: r.clone(),
                            actual: pop.region.clone(),
                        });
                    }
                }
                Some(pop.region.clone())
            }
            None => req.region.clone(),
        };
        let mut pops: Vec<String> = req.pop.iter().cloned().collect();
        for p in &inv.pops {
            if region.as_ref().is_none_or(|r| *r == p.region) && !pops.contains(&p.name) {
                pops.push(p.name.clone());
            }
        }
        Ok(pops)
    }

    /// Completes an activation: `Activating -> Active`. Refused if the circuit's line
    /// went down meanwhile (the caller then aborts it).
    pub fn confirm(&mut self, id: CircuitId) -> Result<(), CircuitError> {
        let c = self.circuits.get(&id).ok_or(CircuitError::NotFound(id))?;
        if c.state != CircuitState::Activating {
            return Err(CircuitError::WrongState {
                id,
                state: c.state,
                why: "only an activating circuit can be confirmed",
            });
        }
        let line = c.line_id();
        if !self.is_up(&line) {
            return Err(CircuitError::LineDown {
                capture: c.capture,
                line,
            });
        }
        self.update(id, |c| c.state = CircuitState::Active);
        Ok(())
    }

    /// Records the generation that carried an active circuit everywhere.
    pub fn set_generation(&mut self, id: CircuitId, generation: u64) {
        self.update(id, |c| c.generation = generation);
    }

    /// Rolls back an activation that failed (an `Activating` circuit, or an `Active` one
    /// whose aggregator never acknowledged it): the circuit is forgotten (its id is not
    /// reused), and a bounced circuit it was replacing is left without a replacement.
    pub fn abort(&mut self, id: CircuitId) -> Option<Circuit> {
        if !matches!(
            self.circuits.get(&id)?.state,
            CircuitState::Activating | CircuitState::Active
        ) {
            return None;
        }
        self.mark(id);
        let c = self.circuits.remove(&id)?;
        self.index.remove(&c);
        self.free(&c);
        if let Some(old) = c.replaces {
            let key = c.idempotency_key.clone();
            self.update(old, |o| {
                o.replaced_by = None;
                o.idempotency_key = key;
            });
        }
        Some(c)
    }
}

fn check_request(req: &ActivateRequest, max_port_range: u16) -> Result<(), CircuitError> {
    let r = req.ports;
    if r.first > r.last {
        return Err(CircuitError::Invalid(format!(
            "port range {}-{} ends before it starts",
            r.first, r.last
        )));
    }
    if r.first == 0 && !(req.mode == Mode::Address && r.is_any()) {
        return Err(CircuitError::Invalid(
            "port 0: a port is required (address mode may leave it out)".into(),
        ));
    }
    if req.mode == Mode::Port && r.count() > u32::from(max_port_range) {
        return Err(CircuitError::Invalid(format!(
            "{} ports asked for; at most {max_port_range} per circuit",
            r.count()
        )));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(CircuitError::Invalid(
                "idempotency key must be 1 to 256 bytes".into(),
            ));
        }
    }
    Ok(())
}

fn same_request(c: &Circuit, req: &ActivateRequest) -> bool {
    c.mode == req.mode
        && c.return_path == req.return_path
        && c.protocol == req.protocol
        && c.ports == req.ports
        && c.app_host == req.app_host
        && req.region.as_ref().is_none_or(|r| *r == c.region)
        && req
            .capture
            .is_none_or(|a| a == c.capture || c.replaces.is_some())
}
