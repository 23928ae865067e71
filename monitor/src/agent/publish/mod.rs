//! Everything the agent tells the outside: the event bus, the decision
//! lines (stdout, `--events-file`), the control API server and its routes
//! (one file per resource), the status document, the Prometheus metrics and
//! systemd notifications. It reads the other components' state through a
//! [`view::View`] the pipeline hands it, never changing it.

pub mod accept;
pub mod decision_log;
pub mod event_bus;
pub mod metrics;
pub mod notify;
pub mod routes;
pub mod server;
pub mod status;
pub mod view;
