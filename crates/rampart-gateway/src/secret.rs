//! [`Secret`] lives in `rampart-crypto`; re-exported here for the gateway's modules.

pub use rampart_crypto::Secret;
