//! hsmon, the eBPF TLS handshake monitor: the agent (`hsmon run`), its
//! control API and the CLI verbs, as a library so the root integration tests
//! can load exactly the eBPF object the binary ships ([`ebpf_object`]).

pub mod api;
pub mod bans;
pub mod cidr;
pub mod cleanup;
pub mod cli;
pub mod client;
pub mod config;
pub mod conns;
pub mod docs;
pub mod events;
pub mod logging;
pub mod output;
pub mod peers;
pub mod record;
pub mod run;
pub mod status;
pub mod table;
pub mod top;

pub use run::loader::ebpf_object;
