//! Leases: an application holds a leased circuit by renewing it; a circuit whose lease
//! runs out is released (with the reason, over `Watch`), as if its application had
//! released it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Core, Keeper, KeeperError};
use crate::circuits::{Circuit, CircuitError, CircuitId, CircuitState};

/// Why the keeper released a circuit whose lease ran out.
pub const LEASE_EXPIRED: &str = "lease expired";

impl Keeper {
    /// Checks the lease an activation asks for.
    pub(super) fn check_lease(&self, lease_ms: u64) -> Result<(), KeeperError> {
        let s = &self.settings;
        if lease_ms != 0 && !(s.min_lease_ms..=s.max_lease_ms).contains(&lease_ms) {
            return Err(CircuitError::Invalid(format!(
                "lease of {lease_ms} ms: from {} to {} ms, or 0 for none",
                s.min_lease_ms, s.max_lease_ms
            ))
            .into());
        }
        Ok(())
    }

    /// Starts (or restarts) the term of circuit `c`'s lease, if it has one.
    pub(super) fn start_lease(core: &mut Core, c: &Circuit) {
        if c.lease_ms > 0 {
            core.leases
                .insert(c.id, Instant::now() + Duration::from_millis(c.lease_ms));
        }
    }

    /// Renews the leases of `ids`, each in order; a bounced circuit's replacement (the
    /// newest of its chain) is renewed in its place. All or nothing: an unknown
    /// circuit, one without a lease, or one released renews none.
    pub fn renew(&self, ids: &[CircuitId]) -> Result<Vec<Circuit>, KeeperError> {
        let mut core = self.lock()?;
        let mut renewed = Vec::with_capacity(ids.len());
        for &id in ids {
            let mut c = core.circuits.get(id).ok_or(CircuitError::NotFound(id))?;
            while let (CircuitState::Bounced, Some(next)) = (c.state, c.replaced_by) {
                match core.circuits.get(next) {
                    Some(n) => c = n,
                    None => break,
                }
            }
            if c.lease_ms == 0 {
                return Err(CircuitError::WrongState {
                    id: c.id,
                    state: c.state,
                    why: "it has no lease to renew",
                }
                .into());
            }
            if matches!(c.state, CircuitState::Releasing | CircuitState::Released) {
                return Err(CircuitError::WrongState {
                    id: c.id,
                    state: c.state,
                    why: "it is released (its lease ran out, or it was released)",
                }
                .into());
            }
            renewed.push(c.clone());
        }
        for c in &renewed {
            // An activating circuit's term starts when it becomes active.
            if c.state != CircuitState::Activating {
                Self::start_lease(&mut core, c);
            }
        }
        Ok(renewed)
    }

    /// Releases every circuit whose lease ran out (in the background: the release
    /// waits for forwarders). Called periodically.
    pub fn check_leases(self: &Arc<Self>) {
        let now = Instant::now();
        let expired: Vec<CircuitId> = {
            let Ok(mut core) = self.lock() else { return };
            let ids: Vec<CircuitId> = core
                .leases
                .iter()
                .filter(|(_, &at)| at <= now)
                .map(|(&id, _)| id)
                .collect();
            for id in &ids {
                core.leases.remove(id);
            }
            ids
        };
        for id in expired {
            info!(circuit = id, "lease ran out: releasing");
            self.metrics.lease_expiries.inc();
            let keeper = self.clone();
            tokio::spawn(async move {
                if let Err(e) = keeper.release_because(id, Some(LEASE_EXPIRED)).await {
                    warn!(circuit = id, "releasing after the lease ran out: {e}");
                }
            });
        }
    }
}
