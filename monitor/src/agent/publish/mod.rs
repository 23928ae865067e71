//! Everything the agent tells the outside: the event bus, the decision
//! lines (stdout, `--events-file`), the control API server, the status
//! document, the Prometheus metrics and systemd notifications.

pub mod accept;
pub mod decision_log;
pub mod event_bus;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod status;
