//! Fixtures for hsmon's end-to-end tests.
//!
//! Every test here needs root: it creates network namespaces joined by a veth
//! pair ([`netns::NetPair`]), starts real TLS peers in them (OpenSSL's
//! `s_server`/`s_client`, nginx, Python's `ssl`), captures the traffic on the
//! server's veth with tcpdump ([`capture::Capture`]) and turns the capture into
//! per-connection ground truth with tshark and the TLS key log
//! ([`truth::parse_tshark_json`]). [`scenario::Scenario`] ties that together
//! with the `hsmon` agent ([`hsmon::Agent`]) so a test can compare what hsmon
//! reports with what crossed the wire.
//!
//! Tests: `tests/tests/*.rs`, one behaviour per test function. Each e2e test
//! has a `harness_selfcheck_*` twin that drives the same traffic without
//! hsmon and checks only the ground truth (`cargo test -p tests
//! harness_selfcheck` passes without the agent). Run with
//! `--test-threads=1`.
//!
//! Needs (Debian packages): iproute2, openssl, nginx, python3, tcpdump,
//! tshark, prometheus. Environment:
//! - `HSMON_BIN`: the hsmon binary (default `<workspace>/target/release/hsmon`);
//! - `HSMON_REQUIRE_ROOT` or `CI`: without root, fail instead of skipping;
//! - `HSMON_KEEP_TMP=1`: keep each test's directory (pcap, key logs, tshark
//!   JSON, every peer's output);
//! - `HSMON_AGENT_ENTER=nsenter`: start the agent with `nsenter --net` instead
//!   of `ip netns exec` (see [`hsmon::agent_cmd`]).
//!
//! `tests/fixtures/` holds small captures (pcap + key log) and their pruned
//! tshark JSON, on which the ground-truth parser is unit-tested;
//! `prune_tshark_json.py` there says how to regenerate them.
//!
//! Rules every fixture keeps:
//! - traffic only goes to addresses inside the namespaces a test created;
//! - every wait is bounded in time, every loop in count;
//! - processes, namespaces and temporary files are removed on drop, also when
//!   the test panics (set `HSMON_KEEP_TMP=1` to keep the temporary directory).

pub mod attack;
pub mod bench;
pub mod bulk;
pub mod capture;
pub mod cert;
pub mod cmd;
pub mod decisions;
pub mod hosts;
pub mod hsmon;
pub mod loadgen;
pub mod netns;
pub mod nginx;
pub mod openssl;
pub mod packet;
pub mod plain;
pub mod process;
pub mod prom;
pub mod pyssl;
pub mod rawpeer;
pub mod rig;
pub mod root;
pub mod scenario;
pub mod side_net;
pub mod static_tls;
pub mod test_run;
pub mod tlsclient;
pub mod truth;
pub mod workdir;

pub use scenario::{with_scenario, with_scenario_no_agent, Report, Scenario};
pub use truth::{ConnTruth, Dir};
