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

pub mod enforce;
pub mod ingest;
pub mod kernel;
pub mod persist;
pub mod policy;
pub mod publish;
mod reload;
mod state;

use enforce::bans;
use ingest::events;
use kernel::{ebpf_log, ifaces, loader, maps, system, uprobes};
use publish::{decision_log, event_bus, metrics, notify, server, status};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

pub use crate::config::RunArgs as Args;
use ingest::flows::FlowTable;
pub use persist::remove_all;
use state::Shared;
pub use uprobes::UprobeSet;

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

async fn agent(args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let overrides = crate::config::Overrides::from_args(&args);
    let effective = crate::config::resolve(&overrides)?;
    let policy_settings = policy::Settings::from_config(&effective.config);
    let reneg_cap = effective.kernel_reneg_cap;
    tracing::info!(source = %effective.source, ?policy_settings, reneg_cap, "policy");
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
    let hook_mode = args.hooks.or(effective.config.hooks).unwrap_or_default();
    if hook_mode == crate::config::HookMode::Socket {
        config.hooks = monitor_common::flow::HOOKS_SOCKET;
    }
    tracing::info!(hooks = hook_mode.name(), "hook mode");
    maps::write_config(&mut ebpf, &config)?;
    let kernel_maps = maps::take(&mut ebpf, args.flow_map_size)?;
    let allow = bans::allowlist(&effective.allow)?;
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
    // The ban table tells the event bus of each change as it makes it.
    let bus = shared.events.clone();
    state::lock(&shared.bans).set_sink(Box::new(move |change, ban| bus.ban(change, ban)));
    *state::lock(&shared.policy) = policy::Policy::new(policy_settings);
    // Connections already open predate this agent: adopted, never timed.
    state::lock(&shared.policy).adopt_flows_before(crate::agent::kernel::clock::monotonic_now_ns());
    state::lock(&shared.policy).import_history(&persistence.history());
    signals.reload = Some(reload::Reloader::new(&mut ebpf, shared.clone(), overrides)?);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(logger) = logger {
        tasks.spawn(ebpf_log::forward(logger));
    }
    tasks.spawn(events::read_events(kernel_maps.events, shared.clone()));

    let mut attachments = persistence.attach(&mut ebpf, &ifaces)?;
    let sock_hooks = match hook_mode {
        crate::config::HookMode::Socket => Some(kernel::sock_hooks::SockHooks::attach(&mut ebpf)?),
        crate::config::HookMode::Tc => None,
    };
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
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(listener, shared.clone(), args.flow_map_size));
    }

    let (listener, socket_file) = server::bind(&args.socket.socket, &args.socket_group)?;
    let info = status::AgentInfo {
        started,
        socket: args.socket.socket.display().to_string(),
        metrics_addr: args.metrics_addr.0.map(|a| a.to_string()),
        flow_map_capacity: args.flow_map_size,
        hooks: attachments
            .hooks()
            .iter()
            .chain(sock_hooks.iter().flat_map(|s| s.hooks()))
            .cloned()
            .collect(),
        tracepoints,
        policy_source: effective.source.clone(),
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
    drop(sock_hooks);
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
