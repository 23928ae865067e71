//! `hsmon run`: the agent. Loads and attaches the eBPF programs, keeps the
//! flow table (sweep + ring-buffer reader), serves the control API.
//!
//! The policy is fed twice: by the ring-buffer reader (`events.rs`), which
//! hands it every event's flow state and so acts within the reader's
//! wake-up of the segment that crossed a threshold, and by the sweep (every
//! second, `--sweep-interval`), which re-reads the flow map: the fallback
//! for lost events, and the clock of the time-based rules. Its
//! maps and links are pinned (see `persist.rs`): on SIGINT/SIGTERM it leaves them
//! (protection continues; `hsmon cleanup` removes them), or with
//! `--no-persist` detaches everything and removes what it created.

mod attach;
mod bans;
mod decision_log;
mod ebpf_log;
mod event_bus;
mod events;
mod flows;
mod ifaces;
pub mod loader;
mod maps;
pub mod metrics;
mod netlink;
mod notify;
mod over_cap;
mod persist;
mod pins;
pub mod policy;
mod reload;
mod server;
mod sock_destroy;
mod state;
pub mod state_file;
mod status;
mod system;
mod uprobes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use monitor_common::flow::MAX_PORTS;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::SocketArg;
use flows::{FlowTable, DEFAULT_KEEP_CLOSED};
pub use persist::remove_all;
pub use pins::DEFAULT_PIN_DIR;
use state::Shared;
pub use uprobes::UprobeSet;

/// Arguments of `hsmon run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to watch (repeatable); default: every interface that is up.
    #[arg(long = "iface", value_name = "IF", value_parser = ifaces::parse_iface_name)]
    pub iface: Vec<String>,
    /// Control socket to listen on.
    #[command(flatten)]
    pub socket: SocketArg,
    /// Only track flows to these server ports (comma-separated, at most 16);
    /// default: every port.
    #[arg(long, value_name = "P,P", value_parser = parse_ports)]
    pub ports: Option<PortList>,
    /// Capacity of the kernel's flow map (an LRU: the least recently used flow
    /// makes room when it is full).
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub flow_map_size: u32,
    /// Size in bytes of the kernel's event ring buffer: a power of two, at
    /// least one page (4096). Events that do not fit are counted as
    /// `events_lost`; the flow counters stay exact (the sweep reads them).
    #[arg(long, value_name = "BYTES", default_value_t = loader::DEFAULT_EVENTS_RING_SIZE,
          value_parser = parse_ring_size)]
    pub events_ring_size: u32,
    /// How many closed flows to keep for `hsmon conns`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP_CLOSED)]
    pub keep_closed: usize,
    /// Never ban this address or prefix (repeatable); loopback and every
    /// address of this host's interfaces at start-up are always allowlisted.
    #[arg(long = "allow", value_name = "CIDR", value_parser = crate::cidr::parse_allow)]
    pub allow: Vec<crate::cidr::Cidr>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, or `off`.
    #[arg(long, value_name = "ADDR:PORT|off", default_value = metrics::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: metrics::MetricsAddr,
    /// Most client-initiated renegotiations per connection (0: no cap). The
    /// client segment carrying the one over the cap, and every later one of
    /// that connection, is dropped at TC ingress, and the connection is reset.
    /// Overrides the policy file's `[limits] reneg_cap`.
    #[arg(long, value_name = "N")]
    pub reneg_cap: Option<u32>,
    /// The policy file (TOML); default /etc/hsmon/hsmon.toml if it exists,
    /// else the embedded defaults (`hsmon config default`).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Compute every policy decision but change nothing (`would_ban`).
    #[arg(long)]
    pub dry_run: bool,
    /// Also append every policy decision (the JSON lines printed on stdout)
    /// to this file; SIGHUP reopens it (for logrotate).
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<std::path::PathBuf>,
    /// Which libssl functions get uprobes: `handshake` (functions called
    /// once or a few times per connection; process, library and handshake
    /// timing for apps that call SSL_do_handshake/SSL_accept/SSL_connect),
    /// `full` (also SSL_read/SSL_write on every I/O call and SSL_get_error:
    /// a trap per call, costly), or `off` (no process fields). The README's
    /// "Probe sets" section lists the fields each provides.
    #[arg(long, value_name = "SET", value_enum, default_value_t = UprobeSet::Handshake)]
    pub uprobes: UprobeSet,
    /// Same as `--uprobes off`.
    #[arg(long, conflicts_with = "uprobes")]
    pub no_uprobes: bool,
    /// Probe only this file (repeatable; a libssl or an executable carrying
    /// OpenSSL): no discovery, no rescans.
    #[arg(long, value_name = "FILE", conflicts_with = "no_uprobes")]
    pub uprobe_target: Vec<std::path::PathBuf>,
    /// Members of this group may use the control socket (besides root): the
    /// socket file gets it when the group exists.
    #[arg(long, value_name = "GROUP", default_value = server::DEFAULT_SOCKET_GROUP)]
    pub socket_group: String,
    /// How often the flow map is re-read (the policy's fallback for lost
    /// events and its clock for the handshake timeout). For tests and
    /// benchmarks: a long interval shows what the event path does alone.
    #[arg(long, value_name = "DURATION", default_value = "1s", hide = true,
          value_parser = parse_sweep_interval)]
    pub sweep_interval: Duration,
    /// Pinned state across restarts (`--pin-dir`, `--state-file`, `--no-persist`).
    #[command(flatten)]
    pub persist: persist::PersistArgs,
}

/// A port filter from `--ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Parses `443,8443`: 1 to 16 distinct ports, each 1..=65535.
fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut ports = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be watched".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "at most {MAX_PORTS} ports can be watched, got {}",
            ports.len()
        ));
    }
    Ok(PortList(ports))
}

/// Parses `--sweep-interval`: a duration from 10 ms to 1 h (`500ms`, `60s`).
fn parse_sweep_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{s:?} is not between 10ms and 1h"));
    }
    Ok(d)
}

/// Parses `--events-ring-size`: a power of two from 4096 (one page) to 1 GiB.
fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    if !n.is_power_of_two() || !(4096..=(1 << 30)).contains(&n) {
        return Err(format!(
            "{n} is not a power of two between 4096 and 1073741824"
        ));
    }
    Ok(n)
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = rt.block_on(agent(args));
    // Blocking work still running (a uprobe rescan reading ELF files, a
    // sweep) must not hold the exit up: everything hsmon owns is released.
    rt.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// SIGINT and SIGTERM, registered before anything is attached so a signal
/// during start-up still leads to a clean stop; and SIGHUP (systemd's
/// `ExecReload`), which must not kill the agent.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// What SIGHUP does once the agent is up (before: log and carry on).
    reload: Option<reload::Reloader>,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            term: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
            reload: None,
        })
    }

    /// Waits for SIGINT or SIGTERM; returns its name. SIGHUP reloads the
    /// configuration (`reload`) and waits on.
    async fn recv(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.int.recv() => return "SIGINT",
                _ = self.term.recv() => return "SIGTERM",
                _ = self.hup.recv() => {
                    decision_log::reopen();
                    match self.reload.as_mut() {
                        Some(r) => r.reload(),
                        None => tracing::warn!("SIGHUP during start-up: nothing reloaded"),
                    }
                }
            }
        }
    }
}

/// The renegotiation cap the kernel enforces: none in dry-run, where nothing
/// may be dropped (the policy then reports `would_reset` for a connection
/// over the cap).
fn kernel_reneg_cap(configured: u32, dry_run: bool) -> u32 {
    if dry_run && configured != 0 {
        tracing::warn!(
            configured,
            "dry-run: the renegotiation cap is not enforced in the kernel (the policy reports would_reset)"
        );
        return 0;
    }
    configured
}

async fn agent(args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let (policy_config, policy_source) = crate::config::Config::resolve(args.config.as_deref())?;
    let mut policy_settings = policy::Settings::from_config(&policy_config, args.dry_run);
    policy_settings.reneg_cap = args.reneg_cap.unwrap_or(policy_config.limits.reneg_cap);
    let reneg_cap = kernel_reneg_cap(
        args.reneg_cap.unwrap_or(policy_config.limits.reneg_cap),
        policy_settings.dry_run,
    );
    tracing::info!(source = %policy_source, ?policy_settings, reneg_cap, "policy");
    let mut signals = Signals::new()?;
    system::raise_memlock_limit();
    system::ensure_tracefs()?;
    let ifaces = ifaces::resolve(&args.iface)?;
    // Bound before anything is loaded: a busy port fails with nothing attached.
    let metrics_listener = match args.metrics_addr.0 {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    if let Some(path) = &args.events_file {
        decision_log::open(path)?;
    }
    let mut persistence = persist::Persistence::open(&args.persist)?;
    let mut ebpf = persistence.load(args.flow_map_size, args.events_ring_size)?;
    let logger = loader::ebpf_logger(&mut ebpf);
    let ports = args.ports.map(|p| p.0).unwrap_or_default();
    let mut config = maps::tracker_config(&ports);
    config.reneg_cap = reneg_cap;
    maps::write_config(&mut ebpf, &config)?;
    let kernel_maps = maps::take(&mut ebpf, args.flow_map_size)?;
    let mut extra_allow = args.allow.clone();
    extra_allow.extend(policy_config.allow.iter().copied());
    let allow = bans::allowlist(&extra_allow)?;
    tracing::info!(
        allowlist = %allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        "addresses that are never banned"
    );
    let ban_table = persistence.ban_table(&mut ebpf, allow)?;
    loader::load_programs(&mut ebpf)?;

    let shared = Arc::new(Shared::new(
        FlowTable::new(kernel_maps.flows, args.keep_closed),
        kernel_maps.stats,
        ban_table,
    ));
    *state::lock(&shared.policy) = policy::Policy::new(policy_settings);
    state::lock(&shared.policy).import_history(&persistence.history());
    signals.reload = Some(reload::Reloader::new(
        &mut ebpf,
        shared.clone(),
        reload::Overrides {
            config: args.config.clone(),
            dry_run: args.dry_run,
            reneg_cap: args.reneg_cap,
            allow: args.allow.clone(),
        },
    )?);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(logger) = logger {
        tasks.spawn(ebpf_log::forward(logger));
    }
    tasks.spawn(events::read_events(kernel_maps.events, shared.clone()));

    let mut attachments = persistence.attach(&mut ebpf, &ifaces)?;
    let state_writer = persistence.writer(&args.socket.socket.display().to_string(), &attachments);
    tasks.spawn(persist::save_loop(shared.clone(), state_writer.clone()));
    let mut tracepoints = attachments.tracepoints().to_vec();
    let uprobe_set = if args.no_uprobes {
        UprobeSet::Off
    } else {
        args.uprobes
    };
    if uprobe_set == UprobeSet::Off {
        tracing::info!("--uprobes off: libssl uprobes not attached");
    } else if let Some(u) =
        uprobes::Uprobes::attach_or_warn(&mut ebpf, &args.uprobe_target, uprobe_set)
    {
        tracepoints.extend(u.tracepoints().iter().cloned());
        if shared.uprobes.set(u).is_err() {
            tracing::warn!("the libssl uprobes were already set");
        }
    }
    tasks.spawn(sweep(
        shared.clone(),
        args.sweep_interval,
        notify::Watchdog::from_env(),
    ));
    tasks.spawn(bans::sweep(shared.clone()));
    tasks.spawn(event_bus::watch_bans(shared.clone()));
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(listener, shared.clone(), args.flow_map_size));
    }

    let (listener, socket_file) = server::bind(&args.socket.socket, &args.socket_group)?;
    let info = status::AgentInfo {
        started,
        socket: args.socket.socket.display().to_string(),
        metrics_addr: args.metrics_addr.0.map(|a| a.to_string()),
        flow_map_capacity: args.flow_map_size,
        hooks: attachments.hooks().to_vec(),
        tracepoints,
        policy_source: policy_source.clone(),
        persist: persistence.info(),
    };
    if shared.info.set(info).is_err() {
        tracing::warn!("the agent's status facts were already set");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(listener, shared.clone(), async {
        let _ = stop_rx.await;
    }));
    tracing::info!(
        socket = %args.socket.socket.display(),
        interfaces = ifaces.len(),
        ports = if ports.is_empty() { "all".to_owned() } else { format!("{ports:?}") },
        reneg_cap,
        "hsmon ready"
    );
    // Hooks attached, socket listening: systemd may consider us started.
    notify::ready(&format!(
        "watching {} interface(s), control socket {}",
        ifaces.len(),
        args.socket.socket.display()
    ));
    shared.events.publish(
        event_bus::Kind::AgentStarted,
        serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "interfaces": ifaces.len(),
            "reneg_cap": reneg_cap,
        }),
    );

    // From here on the object is only kept alive; the uprobe rescans attach through it.
    let ebpf = Arc::new(std::sync::Mutex::new(ebpf));
    if shared.uprobes.get().is_some() {
        tasks.spawn(uprobes::rescan_every(ebpf.clone(), shared.clone()));
    }
    let outcome = tokio::select! {
        sig = signals.recv() => {
            tracing::info!("{sig}: stopping");
            Ok(())
        }
        done = &mut server => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("the control server stopped by itself")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::Error::new(e).context("the control server failed")),
        },
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a background task stopped by itself")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::Error::new(e).context("a background task failed")),
        },
    };

    shared
        .events
        .publish(event_bus::Kind::AgentStopping, serde_json::Value::Null);
    notify::stopping();
    let _ = stop_tx.send(());
    if !server.is_finished()
        && tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
    {
        server.abort();
    }
    tasks.shutdown().await;
    persistence.stop(&mut attachments, &shared, &state_writer);
    drop(socket_file);
    drop(ebpf);
    // The uprobes (one perf event per probe and file) detach when the last
    // reference to the shared state goes; time it, it can take a while.
    let detaching = std::time::Instant::now();
    drop(shared);
    tracing::debug!(
        "shared state (uprobes included) released in {:.2} s",
        detaching.elapsed().as_secs_f64()
    );
    if outcome.is_ok() {
        tracing::info!("hsmon stopped");
    }
    outcome
}

/// Every `interval` (`--sweep-interval`, 1 s by default): re-read `FLOWS`, collect
/// closed flows; then, under a systemd watchdog, ping it at half its interval
/// (sweeping more often when that is shorter), so a stuck sweep stops the
/// pings.
async fn sweep(
    shared: Arc<Shared>,
    interval: Duration,
    mut watchdog: Option<notify::Watchdog>,
) -> Result<()> {
    let every = match &watchdog {
        Some(w) => {
            tracing::info!(every = ?w.every(), "systemd watchdog enabled: pinging it from the sweep");
            interval.min(w.every() / 2).max(Duration::from_millis(10))
        }
        None => interval,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.sweep()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flow sweep: {e:#}"),
            Err(e) => tracing::warn!("flow sweep task: {e}"),
        }
        if let Some(w) = watchdog.as_mut() {
            w.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_enforces_no_renegotiation_cap_in_the_kernel() {
        assert_eq!(kernel_reneg_cap(3, true), 0);
        assert_eq!(kernel_reneg_cap(3, false), 3);
        assert_eq!(kernel_reneg_cap(0, false), 0);
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("262144"), Ok(262_144));
        assert!(parse_ring_size("4095").is_err());
        assert!(parse_ring_size("6000").is_err());
        assert!(parse_ring_size("2048").is_err());
        assert!(parse_ring_size("-1").is_err());
        assert!(parse_ring_size("big").is_err());
    }

    #[test]
    fn sweep_intervals() {
        assert_eq!(parse_sweep_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_sweep_interval("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_sweep_interval("1ms").is_err());
        assert!(parse_sweep_interval("2h").is_err());
        assert!(parse_sweep_interval("soon").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("443"), Ok(PortList(vec![443])));
        assert_eq!(parse_ports("443, 8443,443"), Ok(PortList(vec![443, 8443])));
        assert!(parse_ports("").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("443,,8443").is_err());
        let seventeen: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        assert!(parse_ports(&seventeen.join(",")).is_err());
    }
}
