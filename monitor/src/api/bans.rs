//! The control API's ban documents and the limits a ban must keep.
//!
//! API (on the agent's control socket):
//! * `GET /v1/bans`: JSON array of [`BanRecord`], the bans in force, ordered
//!   by prefix (IPv4 first).
//! * `POST /v1/bans` with an [`AddBan`] body: bans a prefix (or replaces the
//!   TTL and reason of an existing ban on exactly that prefix); answers the
//!   [`BanRecord`]. Refused with 409 when the prefix overlaps the allowlist,
//!   400 for a bad prefix, TTL or reason, 507 when the family's map is full.
//! * `DELETE /v1/bans/{cidr}` (`/v1/bans/10.0.0.0/24`, or with the `/`
//!   escaped as `%2F`): removes the ban on exactly that prefix; answers its
//!   [`BanRecord`], or 404 when there is none.
//! * `POST /v1/bans/bulk` with a [`BulkAdd`] body (at most [`MAX_BULK`]
//!   bans): adds each like `POST /v1/bans`, under one lock; answers a
//!   [`BulkResult`] with the number added and each refused ban with its
//!   error (one refusal does not stop the others). `hsmon bans load FILE`
//!   uses it: 100,000 bans take well under a second, where one request per
//!   ban takes tens of seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cidr::Cidr;

/// `GET` lists, `POST` adds; `DELETE {BANS_PATH}/{cidr}` removes.
pub const BANS_PATH: &str = "/v1/bans";

/// `POST` adds many bans in one request ([`BulkAdd`]).
pub const BANS_BULK_PATH: &str = "/v1/bans/bulk";

/// The most bans one [`BulkAdd`] may carry: both families' maps full.
pub const MAX_BULK: usize = 2 * monitor_common::ban::MAX_BANS_PER_FAMILY as usize;

/// The body of `POST /v1/bans/bulk`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkAdd {
    /// The bans, each as `POST /v1/bans` takes it.
    pub bans: Vec<AddBan>,
}

/// The answer to `POST /v1/bans/bulk`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    /// Bans added (or replaced).
    pub added: u64,
    /// The bans refused, in request order, each with why.
    pub refused: Vec<BulkRefusal>,
}

/// One ban of a [`BulkAdd`] the agent refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRefusal {
    /// The `cidr` as the request gave it.
    pub cidr: String,
    /// Why (the message `POST /v1/bans` would answer).
    pub error: String,
}

/// The longest ban a TTL may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The TTL of `hsmon bans add` without `--ttl`.
pub const DEFAULT_TTL: &str = "10m";

/// The longest reason text, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// `added_by` of a ban an operator added through the API.
pub const ADDED_BY_MANUAL: &str = "manual";

/// A ban in force, as `GET /v1/bans` serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The banned prefix (`"192.0.2.7/32"`, `"2001:db8::/48"`).
    pub cidr: Cidr,
    /// Why, as given when the ban was added (may be empty).
    pub reason: String,
    /// Milliseconds until the kernel stops dropping the prefix's packets.
    pub expires_in_ms: u64,
    /// Who added it: `"manual"` (the control API, `hsmon bans add`).
    pub added_by: String,
}

/// The body of `POST /v1/bans`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddBan {
    /// An address or prefix (`"192.0.2.7"`, `"192.0.2.0/24"`); not /0.
    pub cidr: String,
    /// How long the ban lasts, in milliseconds: 1 to 86,400,000 (24 h).
    pub ttl_ms: u64,
    /// Why (at most 200 characters, no control characters; may be empty).
    #[serde(default)]
    pub reason: String,
}

/// Checks a ban's duration: more than zero, at most [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<(), String> {
    if ttl.is_zero() {
        return Err("a TTL must be longer than zero".into());
    }
    if ttl > MAX_TTL {
        return Err(format!(
            "a TTL of {} is longer than the 24h maximum",
            humantime::format_duration(ttl)
        ));
    }
    Ok(())
}

/// Checks a reason text: at most [`MAX_REASON_CHARS`] characters, no control
/// characters (it is printed in a table).
pub fn check_reason(s: &str) -> Result<(), String> {
    if s.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "a reason is at most {MAX_REASON_CHARS} characters long"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("a reason cannot contain control characters (newlines, tabs...)".into());
    }
    Ok(())
}
