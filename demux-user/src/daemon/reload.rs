//! Reload: on SIGHUP, or root's `reload` request on the control socket, the daemon reads its
//! configuration again (the `--config` file, then the same flags over it: the one merge of
//! `demux daemon`) and applies the difference to the running daemon:
//!
//! - `[limits]`: callers are held to the new values from the next request (and the connection
//!   limits from the next connection); what they hold already stays.
//! - `[[endpoint]]`s: one that left the file is closed, one that came into it is created, one
//!   that stayed the same is not touched (same id, counters, backing socket: no gap). A changed
//!   endpoint is one closed and one created. One closed by hand (`demux close`) meanwhile is
//!   created again.
//! - `interfaces`: one that left the list is detached (its workers drain their rings), one
//!   that came into it is brought up as at start ([`Ifaces::bring_up`]).
//! - `stats_interval` takes effect at once.
//! - The keys the daemon uses only at start (`mode`, `control`, `control_group`, `metrics`,
//!   `frames`, `bpf_log`, `fast_path_uid`, `zero_copy`) are reported as changed and left as
//!   they are until a restart (an interface brought up by the reload binds as the running
//!   `zero_copy` says).
//!
//! A file that cannot be read, parsed or validated is refused whole, with the parser's line and
//! field, before anything changes, as is a new interface that does not exist. A step that fails
//! while applying (a port the kernel finds taken, an attach the driver refuses) stops the
//! reload: the answer names it and what was applied before it, the daemon keeps running with
//! that, and a reload after the fix applies the rest. Every change is logged.

use std::{
    mem,
    sync::{Arc, Mutex},
    time::Duration,
};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{ifaces::Ifaces, notify::Notifier, state::Caller, state::State};
use crate::{
    attach::ifindex,
    config::{Config, Limits},
    control::{BindRequest, ErrorCode},
    program::Loaded,
};

/// Reads the configuration again, as at start (file, then flags).
pub type Reread = Box<dyn FnMut() -> anyhow::Result<Config> + Send>;

/// A reload asked for over the control socket, with where its answer goes.
pub struct Ask {
    /// The changes, or why none or not all were made.
    pub reply: oneshot::Sender<Result<Vec<String>, ReloadError>>,
}

/// Where the control socket sends reloads: the daemon's main task.
pub type Asks = mpsc::Sender<Ask>;

/// Why a reload changed nothing, or not everything.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The daemon was started without `--config`.
    #[error(
        "reload: this daemon was started without --config, so it has no file to read again \
         (its settings came from flags, which a reload cannot change); start it with --config \
         FILE to use reloads"
    )]
    NoConfigFile,
    /// The file cannot be read, parsed or validated, or names an interface that does not
    /// exist: nothing changed.
    #[error("reload refused, nothing changed: {0}")]
    Refused(String),
    /// A step failed while applying: what was applied before it stays.
    #[error(
        "reload stopped at {step}: {message}; applied before it: {applied}; the daemon runs on \
         with that (fix the cause and reload again)"
    )]
    Partial {
        /// The step that failed.
        step: String,
        /// Why.
        message: String,
        /// What was applied, `;`-separated, or `nothing`.
        applied: String,
    },
    /// The daemon is shutting down.
    #[error("reload: the daemon is shutting down")]
    ShuttingDown,
}

impl ReloadError {
    /// The code the wire answer carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReloadError::NoConfigFile | ReloadError::Refused(_) => ErrorCode::InvalidArgument,
            ReloadError::Partial { .. } => ErrorCode::Internal,
            ReloadError::ShuttingDown => ErrorCode::Unavailable,
        }
    }
}

/// What differs between the running configuration and the one read again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Interfaces to detach, then to attach.
    pub detach: Vec<String>,
    pub attach: Vec<String>,
    /// Configured endpoints to close (their ids), then requests to create.
    pub close: Vec<(u32, BindRequest)>,
    pub create: Vec<BindRequest>,
    /// Configured endpoints that stay (request, id).
    pub keep: Vec<(BindRequest, u32)>,
    /// New limits, if they changed.
    pub limits: Option<Limits>,
    /// A new `stats_interval`, if it changed.
    pub stats_interval: Option<Duration>,
    /// Keys used only at start that changed: reported, not applied.
    pub at_restart: Vec<&'static str>,
}

/// The difference from `old` (with its endpoints as created: request and id) to `new`.
/// Endpoints are matched request for request: an equal request in both stays.
pub fn plan(old: &Config, configured: &[(BindRequest, u32)], new: &Config) -> Plan {
    let mut plan = Plan {
        detach: old
            .ifaces
            .iter()
            .filter(|i| !new.ifaces.contains(i))
            .cloned()
            .collect(),
        attach: new
            .ifaces
            .iter()
            .filter(|i| !old.ifaces.contains(i))
            .cloned()
            .collect(),
        limits: (old.limits != new.limits).then_some(new.limits),
        stats_interval: (old.stats_interval != new.stats_interval).then_some(new.stats_interval),
        ..Plan::default()
    };
    plan.attach.dedup();
    let mut unmatched: Vec<Option<&(BindRequest, u32)>> = configured.iter().map(Some).collect();
    for request in &new.endpoints {
        match unmatched
            .iter_mut()
            .find(|slot| slot.is_some_and(|(r, _)| r == request))
            .and_then(Option::take)
        {
            Some(kept) => plan.keep.push(kept.clone()),
            None => plan.create.push(request.clone()),
        }
    }
    plan.close = unmatched
        .into_iter()
        .flatten()
        .map(|(request, id)| (*id, request.clone()))
        .collect();
    let changed = [
        ("mode", old.mode != new.mode),
        ("control", old.control != new.control),
        ("control_group", old.control_group != new.control_group),
        ("metrics", old.metrics != new.metrics),
        ("frames", old.frames != new.frames),
        ("bpf_log", old.bpf_log != new.bpf_log),
        ("fast_path_uid", old.fast_path_uid != new.fast_path_uid),
        ("zero_copy", old.zero_copy != new.zero_copy),
    ];
    plan.at_restart = changed
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect();
    plan
}

/// The running configuration and how to read it again.
pub struct Reloader {
    reread: Option<Reread>,
    /// What is applied (the start-only keys as at start).
    current: Config,
    /// The configured endpoints as created: request (as in the file) and id.
    configured: Vec<(BindRequest, u32)>,
}

impl Reloader {
    /// The daemon started with `config`, its endpoints created as `configured`; `reread` reads
    /// the configuration again (`None`: started without a config file).
    pub fn new(
        reread: Option<Reread>,
        config: &Config,
        configured: Vec<(BindRequest, u32)>,
    ) -> Self {
        Self {
            reread,
            current: config.clone(),
            configured,
        }
    }

    /// The configuration applied now.
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Reads the configuration again and applies the difference (see the module comment);
    /// returns the changes, one line each, all logged.
    pub async fn reload(
        &mut self,
        state: &Arc<Mutex<State>>,
        ifaces: &mut Ifaces,
        loaded: &mut Loaded,
    ) -> Result<Vec<String>, ReloadError> {
        let reread = self.reread.as_mut().ok_or(ReloadError::NoConfigFile)?;
        let new = reread().map_err(|e| ReloadError::Refused(format!("{e:#}")))?;
        let plan = plan(&self.current, &self.configured, &new);
        for iface in &plan.attach {
            ifindex(iface).map_err(|e| ReloadError::Refused(format!("interfaces: {e}")))?;
        }
        let mut done: Vec<String> = Vec::new();
        let result = self
            .apply(plan, &new, state, ifaces, loaded, &mut done)
            .await;
        self.current.ifaces = ifaces.names();
        for change in &done {
            info!("reload: {change}");
        }
        match result {
            Ok(()) => {
                if done.is_empty() {
                    info!("reload: nothing changed");
                }
                Ok(done)
            }
            Err((step, message)) => {
                let applied = match done.is_empty() {
                    true => "nothing".to_owned(),
                    false => done.join("; "),
                };
                let error = ReloadError::Partial {
                    step,
                    message,
                    applied,
                };
                warn!("{error}");
                Err(error)
            }
        }
    }

    async fn apply(
        &mut self,
        plan: Plan,
        new: &Config,
        state: &Arc<Mutex<State>>,
        ifaces: &mut Ifaces,
        loaded: &mut Loaded,
        done: &mut Vec<String>,
    ) -> Result<(), (String, String)> {
        for key in &plan.at_restart {
            done.push(format!(
                "{key} changed in the file: used only at start, it takes effect at the next \
                 restart (not applied)"
            ));
        }
        if let Some(limits) = plan.limits {
            state.lock().expect("state lock").set_limits(limits);
            self.current.limits = limits;
            done.push(format!("limits: now {limits:?}"));
        }
        if let Some(interval) = plan.stats_interval {
            self.current.stats_interval = interval;
            done.push(format!("stats_interval: now {interval:?}"));
        }
        // Endpoints that left the file go first: a changed one frees its port for its new self.
        let mut configured = Vec::new();
        for (id, request) in plan.close {
            let mut state = state.lock().expect("state lock");
            // Only while it is still the daemon's own with that binding: an id closed by hand
            // may have been given to someone else's endpoint since.
            if state
                .configured(id)
                .is_none_or(|held| held.local != request.local)
            {
                continue;
            }
            match state.close(id, Caller::DAEMON) {
                Ok(()) => done.push(format!("endpoint {id} ({}) closed", describe(&request))),
                Err(e) => {
                    // It stays, and stays known as configured: the next reload tries again.
                    warn!(id, "reload: closing endpoint {id} failed: {e}");
                    configured.push((request, id));
                }
            }
        }
        for (request, id) in plan.keep {
            let held = state
                .lock()
                .expect("state lock")
                .configured(id)
                .is_some_and(|held| held.local == request.local);
            if held {
                configured.push((request, id));
            } else {
                match super::bind_configured(state, request.clone()) {
                    Ok(new_id) => {
                        done.push(format!(
                            "endpoint {id} ({}) had been closed by hand: created again as {new_id}",
                            describe(&request)
                        ));
                        configured.push((request, new_id));
                    }
                    Err(e) => {
                        self.configured = configured;
                        return Err((
                            format!("creating {} again", describe(&request)),
                            format!("{e:#}"),
                        ));
                    }
                }
            }
        }
        self.configured = configured;
        for name in plan.detach {
            if let Some(stopping) = ifaces.take_down(&name, loaded) {
                state.lock().expect("state lock").forget_queues(&name);
                // The workers drain their rings off the runtime.
                let _ = tokio::task::spawn_blocking(move || stopping.join()).await;
                done.push(format!("interface {name} detached"));
            }
        }
        for name in plan.attach {
            if let Err(e) = ifaces.bring_up(&name, loaded, state) {
                return Err((format!("attaching interface {name}"), format!("{e:#}")));
            }
            done.push(format!("interface {name} attached"));
        }
        for request in plan.create {
            match super::bind_configured(state, request.clone()) {
                Ok(id) => {
                    done.push(format!("endpoint {id} ({}) created", describe(&request)));
                    self.configured.push((request, id));
                }
                Err(e) => {
                    return Err((
                        format!("creating endpoint {}", describe(&request)),
                        format!("{e:#}"),
                    ))
                }
            }
        }
        // The start-only keys stay as they run.
        let running = mem::take(&mut self.current);
        self.current = Config {
            ifaces: running.ifaces,
            mode: running.mode,
            control: running.control,
            control_group: running.control_group,
            metrics: running.metrics,
            frames: running.frames,
            bpf_log: running.bpf_log,
            fast_path_uid: running.fast_path_uid,
            zero_copy: running.zero_copy,
            ..new.clone()
        };
        Ok(())
    }
}

/// `udp 0.0.0.0:53 -> count`, as a log line shows an endpoint.
fn describe(request: &BindRequest) -> String {
    let protocol = format!("{:?}", request.protocol).to_lowercase();
    let connect = request
        .connect
        .as_ref()
        .map(|c| format!(" connect {c}"))
        .unwrap_or_default();
    format!("{protocol} {}{connect} -> {}", request.local, request.to)
}

/// Tells the supervisor `RELOADING=1`, reloads, then `READY=1` with the outcome as status.
pub async fn reload_notified(
    reloader: &mut Reloader,
    notifier: Option<&Notifier>,
    state: &Arc<Mutex<State>>,
    ifaces: &mut Ifaces,
    loaded: &mut Loaded,
) -> Result<Vec<String>, ReloadError> {
    if let Some(Err(e)) = notifier.map(Notifier::reloading) {
        warn!("{e}");
    }
    let result = reloader.reload(state, ifaces, loaded).await;
    let status = match &result {
        Ok(changes) => format!("reloaded: {} change(s)", changes.len()),
        Err(e) => e.to_string(),
    };
    if let Some(Err(e)) = notifier.map(|n| n.ready(&status)) {
        warn!("{e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SinkSpec;

    fn config(text: &str) -> Config {
        let config = Config::parse(text).expect("a valid test config");
        config.validate().expect("a valid test config");
        config
    }

    const BASE: &str = r#"
        interfaces = ["a", "b"]
        [[endpoint]]
        protocol = "udp"
        local = "198.18.0.2:5000"
        to = "count"
        [[endpoint]]
        protocol = "udp"
        local = "198.18.0.2:5001"
        to = "count"
    "#;

    fn created(config: &Config) -> Vec<(BindRequest, u32)> {
        config.endpoints.iter().cloned().zip(1..).collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let old = config(BASE);
        let plan = plan(&old, &created(&old), &old.clone());
        assert_eq!(plan.keep.len(), 2);
        assert_eq!(
            plan,
            Plan {
                keep: created(&old),
                ..Plan::default()
            }
        );
    }

    #[test]
    fn endpoints_interfaces_and_limits_differ_item_by_item() {
        let old = config(BASE);
        let new = config(
            r#"
            interfaces = ["b", "c"]
            frames = 1024
            zero_copy = "off"
            stats_interval = "1s"
            [[endpoint]]
            protocol = "udp"
            local = "198.18.0.2:5001"
            to = "count"
            [[endpoint]]
            protocol = "udp"
            local = "198.18.0.2:5000"
            to = "pcap:/tmp/x.pcap"
            [limits]
            endpoints_per_uid = 3
            "#,
        );
        let plan = plan(&old, &created(&old), &new);
        assert_eq!(plan.detach, ["a"]);
        assert_eq!(plan.attach, ["c"]);
        // 5001 stays with its id; 5000 changed its sink: closed and created.
        assert_eq!(plan.keep, vec![(old.endpoints[1].clone(), 2)]);
        assert_eq!(plan.close, vec![(1, old.endpoints[0].clone())]);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].to, SinkSpec::Pcap("/tmp/x.pcap".into()));
        assert_eq!(plan.limits.map(|l| l.endpoints_per_uid), Some(3));
        assert_eq!(plan.stats_interval, Some(Duration::from_secs(1)));
        // zero_copy needs the sockets opened again: reported, left for a restart.
        assert_eq!(plan.at_restart, ["frames", "zero_copy"]);
    }

    #[test]
    fn equal_endpoints_are_matched_one_for_one() {
        let text = |n: usize| {
            let endpoint = "[[endpoint]]\nprotocol = \"udp\"\nlocal = \"198.18.0.0/15:*\"\n\
                            to = \"count\"\ngroup = \"g\"\n";
            format!("interfaces = [\"a\"]\n{}", endpoint.repeat(n))
        };
        let old = config(&text(3));
        let fewer = plan(&old, &created(&old), &config(&text(2)));
        assert_eq!(
            (fewer.keep.len(), fewer.close.len(), fewer.create.len()),
            (2, 1, 0)
        );
        assert_eq!(fewer.close[0].0, 3);
        let more = plan(&old, &created(&old), &config(&text(4)));
        assert_eq!(
            (more.keep.len(), more.close.len(), more.create.len()),
            (3, 0, 1)
        );
    }

    #[test]
    fn errors_say_what_to_do_and_carry_their_codes() {
        let error = ReloadError::NoConfigFile;
        assert!(error.to_string().contains("--config"), "{error}");
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        let error = ReloadError::Partial {
            step: "attaching interface c".into(),
            message: "EBUSY".into(),
            applied: "interface a detached".into(),
        };
        assert!(
            error.to_string().contains("attaching interface c")
                && error.to_string().contains("interface a detached"),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::Internal);
    }
}
