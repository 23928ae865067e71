//! `hsmon run`: the agent. This file starts and stops it: it loads and
//! attaches the eBPF programs, makes each component's state and hands the
//! pieces to `pipeline.rs` (the only wiring, and every timer), to the
//! publisher's view and to the SIGHUP reloader.
//!
//! The policy is fed twice, both through the pipeline: by the ring-buffer
//! reader (`ingest/events.rs`), whose every event's flow state reaches it
//! within the reader's wake-up of the segment that crossed a threshold,
//! and by the sweep timer (every second, `--sweep-interval`), which
//! re-reads the flow map: the fallback for lost events, and the clock of
//! the time-based rules. Its maps and links are pinned (see `persist/`): on
//! SIGINT/SIGTERM it leaves them (protection continues; `hsmon cleanup`
//! removes them), or with `--no-persist` detaches everything and removes
//! what it created.

pub mod enforce;
pub mod ingest;
pub mod kernel;
pub mod persist;
mod pipeline;
pub mod policy;
pub mod publish;
mod reload;

use enforce::bans;
use enforce::over_cap::OverCap;
use ingest::events::ReaderCounts;
use kernel::{ebpf_log, ifaces, loader, maps, system, uprobes};
use pipeline::Pipeline;
use publish::view::View;
use publish::{decision_log, event_bus, metrics, notify, server, status};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

pub use crate::config::RunArgs as Args;
use ingest::flows::FlowTable;
pub use persist::remove_all;
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
    system::check_capabilities()?;
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

    // The components' state, made here and handed in pieces: the pipeline
    // moves data between them, the publisher reads them, SIGHUP resets
    // the policy's settings and the allowlist.
    let events = Arc::new(event_bus::EventBus::new());
    let mut ban_table = ban_table;
    // The ban table tells the event bus of each change as it makes it.
    let bus = events.clone();
    ban_table.set_sink(Box::new(move |change, ban| bus.ban(change, ban)));
    let mut policy = policy::Policy::new(policy_settings);
    // Connections already open predate this agent: adopted, never timed.
    policy.adopt_flows_before(kernel::clock::monotonic_now_ns());
    policy.import_history(&persistence.history());
    let pipeline = Arc::new(Pipeline {
        table: Arc::new(Mutex::new(FlowTable::new(
            kernel_maps.flows,
            args.keep_closed,
        ))),
        policy: Arc::new(Mutex::new(policy)),
        bans: Arc::new(Mutex::new(ban_table)),
        over_cap: Arc::new(Mutex::new(OverCap::default())),
        events,
    });
    let reader = Arc::new(ReaderCounts::default());
    let uprobes_set: Arc<OnceLock<uprobes::Uprobes>> = Arc::new(OnceLock::new());
    let view = Arc::new(View {
        table: pipeline.table.clone(),
        stats: Mutex::new(kernel_maps.stats),
        reader: reader.clone(),
        bans: pipeline.bans.clone(),
        policy: pipeline.policy.clone(),
        over_cap: pipeline.over_cap.clone(),
        uprobes: uprobes_set.clone(),
        info: OnceLock::new(),
        events: pipeline.events.clone(),
    });
    signals.reload = Some(reload::Reloader::new(
        &mut ebpf,
        pipeline.bans.clone(),
        pipeline.policy.clone(),
        pipeline.events.clone(),
        overrides,
    )?);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(logger) = logger {
        tasks.spawn(ebpf_log::forward(logger));
    }
    tasks.spawn(pipeline.clone().read_events(kernel_maps.events, reader));

    let mut attachments = persistence.attach(&mut ebpf, &ifaces)?;
    let sock_hooks =
        persistence.attach_sock_hooks(&mut ebpf, hook_mode == crate::config::HookMode::Socket)?;
    let state_writer = persistence.writer(&args.socket.socket.display().to_string(), &attachments);
    tasks.spawn(pipeline.clone().state_timer(state_writer.clone()));
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
        if uprobes_set.set(u).is_err() {
            tracing::warn!("the libssl uprobes were already set");
        }
    }
    tasks.spawn(
        pipeline
            .clone()
            .sweep_timer(args.sweep_interval, notify::Watchdog::from_env()),
    );
    tasks.spawn(pipeline.clone().ban_timer());
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(listener, view.clone(), args.flow_map_size));
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
    if view.info.set(info).is_err() {
        tracing::warn!("the agent's status facts were already set");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(listener, view.clone(), async {
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
    pipeline.events.publish(
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
    if uprobes_set.get().is_some() {
        tasks.spawn(pipeline::uprobe_timer(ebpf.clone(), uprobes_set.clone()));
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

    pipeline
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
    persistence.stop(&mut attachments, || pipeline.save_state(&state_writer));
    drop(socket_file);
    drop(ebpf);
    drop(signals);
    drop(pipeline);
    drop(view);
    // The uprobes (one perf event per probe and file) detach when the last
    // reference to them goes; time it, it can take a while.
    let detaching = std::time::Instant::now();
    drop(uprobes_set);
    tracing::debug!(
        "the agent's state (uprobes included) released in {:.2} s",
        detaching.elapsed().as_secs_f64()
    );
    if outcome.is_ok() {
        tracing::info!("hsmon stopped");
    }
    outcome
}
