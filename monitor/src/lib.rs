//! hsmon, the eBPF TLS handshake monitor: the agent (`hsmon run`), its
//! control API and the CLI verbs, as a library so the root integration tests
//! can load exactly the eBPF object the binary ships ([`ebpf_object`]).
//!
//! Components: [`api`] (the documents agent and CLI agree on), [`config`]
//! (flags and policy file), [`agent`] (`hsmon run`), [`cli`] (the other
//! verbs). `monitor/tests/layout.rs` checks who may import whom.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod locks;
pub mod logging;
pub mod stdout;

pub use agent::kernel::loader::ebpf_object;
