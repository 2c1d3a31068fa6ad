//! What the engine's integration tests share: a pass's input against a
//! running Helix simulator.

use helix_sim::Simulator;
use twitch_sync_core::{Credentials, LiveSet, SyncConfig, SyncInput};

/// A cold pass (no token, no rate-limit state, no directory walks) over
/// `broadcaster_ids`, pointed at `sim` with its credentials.
pub fn sim_input(sim: &Simulator, broadcaster_ids: Vec<String>) -> SyncInput {
    SyncInput {
        config: SyncConfig {
            helix_url: sim.helix_url(),
            auth_url: sim.auth_url(),
            ..SyncConfig::default()
        },
        credentials: Credentials {
            client_id: sim.client_id(),
            client_secret: sim.client_secret(),
        },
        token: None,
        broadcaster_ids,
        rate_limit: None,
        directories: Vec::new(),
        live_before: LiveSet::default(),
    }
}
