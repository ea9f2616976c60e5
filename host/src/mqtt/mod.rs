//! MQTT for the whole host: topic names and filters ([`topic`]), the client every outbound
//! connection uses ([`client`]), and the server core of the embedded local broker and of the
//! provider emulators ([`server`]).

pub mod client;
pub mod server;
pub mod topic;
