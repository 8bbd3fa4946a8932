//! Activation (make before break: demux and remux first, the aggregator last) and
//! release (the reverse), each committed and acknowledged, or rolled back.

use tracing::{info, warn};

use super::{Keeper, KeeperError};
use crate::circuits::{
    ActivateRequest, Activation, Circuit, CircuitError, CircuitId, CircuitState, EventKind, Release,
};
use crate::inventory::NodeId;

impl Keeper {
    /// Activates a circuit: demux and remux first, then the aggregator, each step
    /// answered only once the forwarders acknowledged it. A failure rolls it back.
    pub async fn activate(&self, req: &ActivateRequest) -> Result<Circuit, KeeperError> {
        let started = std::time::Instant::now();
        let result = self.activate_counted(req).await;
        let m = &self.metrics;
        match &result {
            Ok(_) => {
                m.activations.with_label_values(&["ok"]).inc();
                m.activation_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => m
                .activations
                .with_label_values(&[super::observe::code_label(e).as_str()])
                .inc(),
        }
        result
    }

    async fn activate_counted(&self, req: &ActivateRequest) -> Result<Circuit, KeeperError> {
        let _busy = self.busy();
        self.check_lease(req.lease_ms)?;
        let (id, targets) = {
            let mut core = self.lock()?;
            let inv = self.inv.clone();
            match core
                .circuits
                .activate(&inv, self.settings.max_port_range, req)?
            {
                Activation::Existing(c) => {
                    // A retry holds the circuit as a renewal would.
                    if c.state == CircuitState::Active {
                        Self::start_lease(&mut core, &c);
                    }
                    return Ok(*c);
                }
                Activation::Started(id) => {
                    self.commit(&mut core, &[])?;
                    let c = core.circuits.get(id).ok_or(CircuitError::NotFound(id))?;
                    info!(circuit = id, capture = %c.capture, mode = %c.mode, app_host = %c.app_host, "activating");
                    let dc = vec![c.demux.clone(), c.remux.clone()];
                    (id, Self::targets(&core, dc))
                }
            }
        };
        let circuit = self.complete_activation(id, targets).await?;
        info!(circuit = id, generation = circuit.generation, "active");
        self.emit(EventKind::Activated, circuit.clone(), None, None);
        Ok(circuit)
    }

    /// The rest of an activation once demux and remux have been published.
    pub(super) async fn complete_activation(
        &self,
        id: CircuitId,
        dc: Vec<(NodeId, u64)>,
    ) -> Result<Circuit, KeeperError> {
        if let Err(e) = self.wait_acks(&dc).await {
            return Err(self.roll_back(id, e));
        }
        let targets = {
            let mut core = self.lock()?;
            if let Err(e) = core.circuits.confirm(id) {
                drop(core);
                return Err(self.roll_back(id, e.into()));
            }
            self.commit(&mut core, &[id])?;
            let agg = core
                .circuits
                .get(id)
                .map(|c| c.aggregator.clone())
                .into_iter();
            Self::targets(&core, agg)
        };
        if let Err(e) = self.wait_acks(&targets).await {
            return Err(self.roll_back(id, e));
        }
        let (c, ticket) = {
            let mut core = self.lock()?;
            let c = core
                .circuits
                .get(id)
                .cloned()
                .ok_or(CircuitError::NotFound(id))?;
            // The lease's term starts now; a replacement takes over its predecessor's.
            Self::start_lease(&mut core, &c);
            if let Some(old) = c.replaces {
                core.leases.remove(&old);
            }
            (c, core.ticket)
        };
        // Answered only once written (the aggregator's ACK does not always imply it:
        // a port-mode circuit may change nothing there).
        self.durable(ticket).await?;
        Ok(c)
    }

    pub(super) fn roll_back(&self, id: CircuitId, why: KeeperError) -> KeeperError {
        warn!(circuit = id, "activation failed: {why}; rolling back");
        match self.lock() {
            Ok(mut core) => {
                if core.circuits.abort(id).is_some() {
                    if let Err(e) = self.commit(&mut core, &[]) {
                        return e;
                    }
                }
            }
            Err(e) => return e,
        }
        KeeperError::RolledBack(Box::new(why))
    }

    /// Releases a circuit: the aggregator's entry goes first, then demux and remux.
    /// Forwarders that do not answer in time are not waited for (they get the current
    /// tables when they come back). Releasing a released circuit returns it.
    pub async fn release(&self, id: CircuitId) -> Result<Circuit, KeeperError> {
        self.release_because(id, None).await
    }

    /// [`release`](Self::release), by the keeper itself for `reason` (recorded on the
    /// circuit and told over `Watch`), or by its application (`None`).
    pub(super) async fn release_because(
        &self,
        id: CircuitId,
        reason: Option<&str>,
    ) -> Result<Circuit, KeeperError> {
        let _busy = self.busy();
        let reason = reason.map(str::to_string);
        // A bounced circuit is released at once: (its record, the step's ticket).
        let mut at_once = None;
        let targets = {
            let mut core = self.lock()?;
            let started = core.circuits.begin_release(id)?;
            core.leases.remove(&id);
            if let (Some(why), false) = (&reason, matches!(started, Release::AlreadyReleased(_))) {
                core.circuits.set_reason(id, why);
            }
            match started {
                Release::AlreadyReleased(c) => return Ok(c),
                Release::Released(_) => {
                    let ticket = self.commit(&mut core, &[])?;
                    let c = core
                        .circuits
                        .get(id)
                        .cloned()
                        .ok_or(CircuitError::NotFound(id))?;
                    at_once = Some((c, ticket));
                    Vec::new()
                }
                Release::Started => {
                    self.commit(&mut core, &[])?;
                    let agg = core
                        .circuits
                        .get(id)
                        .map(|c| c.aggregator.clone())
                        .into_iter();
                    Self::targets(&core, agg)
                }
            }
        };
        if let Some((c, ticket)) = at_once {
            self.durable(ticket).await?;
            info!(circuit = id, "released (it had bounced)");
            self.emit(EventKind::Released, c.clone(), None, reason);
            return Ok(c);
        }
        if let Err(e) = self.wait_acks(&targets).await {
            warn!(circuit = id, "release goes on without the aggregator: {e}");
        }
        let (targets, ticket) = {
            let mut core = self.lock()?;
            core.circuits.finish_release(id);
            let ticket = self.commit(&mut core, &[])?;
            let c = core.circuits.get(id).ok_or(CircuitError::NotFound(id))?;
            (
                Self::targets(&core, [c.demux.clone(), c.remux.clone()]),
                ticket,
            )
        };
        // Answered only once written, even if a DC forwarder does not acknowledge.
        self.durable(ticket).await?;
        if let Err(e) = self.wait_acks(&targets).await {
            warn!(
                circuit = id,
                "release completed without every DC forwarder's acknowledgement: {e}"
            );
        }
        let circuit = self.get(id)?;
        info!(circuit = id, "released");
        self.emit(EventKind::Released, circuit.clone(), None, reason);
        Ok(circuit)
    }
}
