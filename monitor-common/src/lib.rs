//! Types shared by hsmon's eBPF programs and its agent, and the TLS record
//! tracker both of them run.
//!
//! `no_std`, allocation-free and panic-free on any input, so the same code is
//! compiled into the TC program and unit-tested, property-tested and fuzzed in
//! user space. With the `user` feature the map types implement `aya::Pod`.
#![no_std]

#[cfg(feature = "testing")]
extern crate std;

pub mod ban;
pub mod flow;
pub mod orient;
pub mod payload;
pub mod rewind;
pub mod ssl;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod tracker;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the types stored in maps (user space only).
    use crate::ban::BanValue;
    use crate::flow::{FlowEvent, FlowKey, FlowValue, TrackerConfig};
    use crate::ssl::ProcInfo;

    // SAFETY: plain `repr(C)` integer structs with explicit padding fields.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for TrackerConfig {}
    unsafe impl aya::Pod for BanValue {}
    unsafe impl aya::Pod for ProcInfo {}
}
