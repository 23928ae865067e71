//! Acting on decisions: bans in the kernel's ban maps (the ban table
//! tells each change as it makes it), connection resets (`SOCK_DESTROY`)
//! and the over-cap sweep.

pub mod bans;
pub mod cap;
pub mod over_cap;
pub mod resets;
pub mod sock_destroy;
