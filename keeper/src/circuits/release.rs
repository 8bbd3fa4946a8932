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
                if let Some(c) = self.touch(id) {
                    c.state = CircuitState::Releasing;
                }
                Ok(Release::Started)
            }
            CircuitState::Bounced => {
                let c = self.touch(id).ok_or(CircuitError::NotFound(id))?;
                c.state = CircuitState::Released;
                Ok(Release::Released(c.clone()))
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
        let c = self.touch(id)?;
        if c.state == CircuitState::Releasing {
            c.state = CircuitState::Released;
        }
        Some(c)
    }
}
