//! Release (the patent's FIG 4): the aggregator's entry goes first, then the demux's and
//! the remux's.

use super::{Circuit, CircuitError, CircuitId, CircuitState, Circuits, Release};

impl Circuits {
    /// Starts a release. An active circuit becomes `Releasing` (its aggregator entry
    /// goes first); a bounced one is released at once; a released one is returned as it
    /// is, so a retried release succeeds.
    pub fn begin_release(&mut self, id: CircuitId) -> Result<Release, CircuitError> {
        let c = self.circuits.get(&id).ok_or(CircuitError::NotFound(id))?;
        match c.state {
            CircuitState::Active => {
                self.update(id, |c| c.state = CircuitState::Releasing);
                Ok(Release::Started)
            }
            CircuitState::Bounced => {
                let c = self
                    .update(id, |c| {
                        c.state = CircuitState::Released;
                        c.clone()
                    })
                    .ok_or(CircuitError::NotFound(id))?;
                Ok(Release::Released(c))
            }
            CircuitState::Released => Ok(Release::AlreadyReleased(c.clone())),
            CircuitState::Activating | CircuitState::Releasing => Err(CircuitError::WrongState {
                id,
                state: c.state,
                why: "wait for the step in progress to finish",
            }),
        }
    }

    /// Completes a release: `Releasing -> Released`.
    pub fn finish_release(&mut self, id: CircuitId) -> Option<&Circuit> {
        let released = self.update(id, |c| {
            let releasing = c.state == CircuitState::Releasing;
            if releasing {
                c.state = CircuitState::Released;
            }
            releasing.then(|| c.clone())
        })?;
        if let Some(c) = released {
            self.free(&c);
        }
        self.circuits.get(&id)
    }

    /// Records why the keeper itself ended a circuit (its lease ran out).
    pub fn set_reason(&mut self, id: CircuitId, reason: &str) {
        self.update(id, |c| c.reason = Some(reason.to_string()));
    }

    /// Forgets a circuit that ended (released, or bounced and replaced) once the
    /// keeper's retention passed. Returns false for one still in use.
    pub fn prune(&mut self, id: CircuitId) -> bool {
        let ended = self.circuits.get(&id).is_some_and(Circuit::has_ended);
        if ended {
            self.mark(id);
            if let Some(c) = self.circuits.remove(&id) {
                self.index.remove(&c);
            }
        }
        ended
    }
}
