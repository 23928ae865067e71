//! What the kernel reports, taken in: ring-buffer events decoded, the
//! flow table (live and recently closed flows) and the records built
//! from it.

pub mod events;
pub mod flow_stats;
pub mod flows;
pub mod record;
