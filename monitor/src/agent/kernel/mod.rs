//! All user-side eBPF glue: loading the object, attaching the
//! programs (TC, tracepoints, uprobes), the kernel maps and the network
//! interfaces they watch, and the pins that outlive the agent.

pub mod attach;
pub mod clock;
pub mod ebpf_log;
pub mod ifaces;
pub mod loader;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod sock_hooks;
pub mod system;
pub mod uprobes;
