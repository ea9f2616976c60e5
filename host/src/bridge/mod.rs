//! The bridge: the local side (embedded broker), the rule chain, the store-and-forward queue
//! and the upstream device sessions that `gatehost run` wires together.

pub mod queue;
