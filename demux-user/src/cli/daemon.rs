//! `demux daemon`: run the daemon (see `demux::daemon`). The configuration is
//! `demux::config::Config`: its defaults, then the `--config` file, then these flags, merged
//! in [`DaemonArgs::merge`] and checked once by `Config::validate`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use demux::{
    attach::{AttachMode, Sharing},
    config::{parse_duration, Config},
    daemon,
    program::BpfLogLevel,
    zero_copy::ZeroCopy,
};

/// `help` text ending in the default from `Config::default()`.
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

#[derive(Clone, Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Interface to attach the XDP program to; repeat for several (adds to the config file's).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    ifaces: Vec<String>,
    #[arg(long, value_name = "MODE", help = with_default(
        "XDP mode: `auto` tries driver mode and falls back to skb mode with a warning; `driver`; \
         `skb` (generic)",
        format!("{:?}", Config::default().mode).to_lowercase(),
    ))]
    mode: Option<AttachMode>,
    #[arg(long, value_name = "SHARING", help = with_default(
        "How the program takes the interface: `direct` attaches it as the interface's only XDP \
         program; `multiprog` joins libxdp's multi-program dispatcher (xdp-loader, xdp-filter), \
         after filtering programs (run priority 100), with its pins under \
         /sys/fs/bpf/xdp/dispatch-IFINDEX-ID/ (removed on stop; after a crash run \
         `demux detach --iface IFACE`); `auto` is `multiprog` when an interface already runs a \
         dispatcher at start, else `direct`",
        format!("{:?}", Config::default().xdp_mode).to_lowercase(),
    ))]
    xdp_mode: Option<Sharing>,
    /// Config file (TOML, format in docs/CONFIG.md): interfaces, control socket, endpoints to
    /// create at start, and every setting below. Flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "PATH", help = with_default(
        "Control socket path",
        Config::default().control.display(),
    ))]
    control: Option<PathBuf>,
    /// Group that may use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = with_default(
        "How often to log the verdict counters (e.g. 500ms, 5s); 0 turns it off",
        format!("{}s", Config::default().stats_interval.as_secs()),
    ))]
    stats_interval: Option<Duration>,
    #[arg(long, value_name = "LEVEL", help = with_default(
        "Log level of the XDP program's own records (aya-log): off, error, warn, info, debug, \
         trace. `off` compiles logging out",
        format!("{:?}", Config::default().bpf_log).to_lowercase(),
    ))]
    bpf_log: Option<BpfLogLevel>,
    #[arg(long, value_name = "N", help = with_default(
        "UMEM frames per rx queue, a power of two from 64 to 1048576",
        Config::default().frames,
    ))]
    frames: Option<u32>,
    #[arg(long, value_name = "N", help = with_default(
        "Entries of each binding table (connected, bound, prefix), from 1024 to 16777216; \
         wildcard bindings need none. An empty table costs about 16 bytes of kernel memory per \
         entry (hash buckets, rounded up to a power of two), a binding about 100 more",
        Config::default().max_bindings,
    ))]
    max_bindings: Option<u32>,
    /// Serve the statistics in OpenMetrics format over HTTP, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// The uid that may lease an interface's AF_XDP queues and read them itself (the fast
    /// path; granted only while that uid's one connection holds every endpoint). None by
    /// default: every client reads through the daemon's ring.
    #[arg(long, value_name = "UID")]
    fast_path_uid: Option<u32>,
    #[arg(long, value_name = "WHEN", help = with_default(
        "AF_XDP zero-copy (the driver receives straight into the UMEM): `on` on every queue, \
         and the daemon fails at start where the driver lacks it (veth does); `off` copy mode; \
         `auto` zero-copy only on a queue that carries none of the host's own traffic (a \
         stalled daemon would cut that off), which today is none: the daemon installs no flow \
         steering rule, so `auto` is copy mode and says so once per interface",
        Config::default().zero_copy,
    ))]
    zero_copy: Option<ZeroCopy>,
}

impl DaemonArgs {
    /// The configuration: defaults, then the file, then the flags given.
    pub(crate) fn merge(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.ifaces.extend(self.ifaces);
        config.mode = self.mode.unwrap_or(config.mode);
        config.xdp_mode = self.xdp_mode.unwrap_or(config.xdp_mode);
        config.control = self.control.unwrap_or(config.control);
        config.stats_interval = self.stats_interval.unwrap_or(config.stats_interval);
        config.bpf_log = self.bpf_log.unwrap_or(config.bpf_log);
        config.frames = self.frames.unwrap_or(config.frames);
        config.max_bindings = self.max_bindings.unwrap_or(config.max_bindings);
        config.control_group = self.control_group.or(config.control_group);
        config.metrics = self.metrics.or(config.metrics);
        config.fast_path_uid = self.fast_path_uid.or(config.fast_path_uid);
        config.zero_copy = self.zero_copy.unwrap_or(config.zero_copy);
        // A file may list no interface (the package's default: the daemon starts and steers
        // nothing); a command line without a file must name one, or it is a mistake.
        if self.config.is_none() && config.ifaces.is_empty() {
            anyhow::bail!(
                "interfaces: none given: pass --iface IFACE (repeatable) or set `interfaces` in \
                 --config"
            );
        }
        config.validate()?;
        Ok(config)
    }
}

pub(crate) fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // First, before anything opens a descriptor: those a service manager passed
    // (`LISTEN_FDS`), the endpoints the previous daemon handed over.
    let inherited = daemon::handover::Inherited::take_from_env();
    // A reload reads the file again and puts the same flags over it, as here.
    let reread = args.config.is_some().then(|| {
        let args = args.clone();
        Box::new(move || args.clone().merge()) as daemon::reload::Reread
    });
    let config = args.merge()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::run_with(config, reread, inherited))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    fn merged(args: &[&str]) -> anyhow::Result<Config> {
        Cli::try_parse_from(std::iter::once("demux").chain(args.iter().copied()))?
            .daemon
            .merge()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("demux-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("demux.toml");
        std::fs::write(
            &file,
            "interfaces = [\"a\"]\nframes = 128\nmode = \"skb\"\n",
        )
        .unwrap();
        let config = merged(&[
            "--config",
            file.to_str().unwrap(),
            "--iface",
            "b",
            "--frames",
            "256",
        ])
        .unwrap();
        assert_eq!(config.ifaces, ["a", "b"]);
        assert_eq!(config.frames, 256, "the flag wins");
        assert_eq!(
            config.mode,
            AttachMode::Skb,
            "the file wins over the default"
        );
        assert_eq!(config.control, Config::default().control);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_copy_from_the_flag_over_the_file_over_the_default() {
        let dir = std::env::temp_dir().join(format!("demux-zc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("demux.toml");
        std::fs::write(&file, "interfaces = [\"a\"]\nzero_copy = \"off\"\n").unwrap();
        let path = file.to_str().unwrap();
        assert_eq!(merged(&["--iface", "a"]).unwrap().zero_copy, ZeroCopy::Auto);
        assert_eq!(
            merged(&["--config", path]).unwrap().zero_copy,
            ZeroCopy::Off
        );
        assert_eq!(
            merged(&["--config", path, "--zero-copy", "on"])
                .unwrap()
                .zero_copy,
            ZeroCopy::On,
            "the flag wins"
        );
        // A wrong word names the flag and the three it may be.
        let error = merged(&["--iface", "a", "--zero-copy", "yes"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--zero-copy") && error.contains("auto, on, off"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_and_file_are_checked_alike() {
        // The same limit whether the frame count comes from a flag or the file.
        let error = merged(&["--iface", "a", "--frames", "2097152"]).unwrap_err();
        assert!(error.to_string().starts_with("frames:"), "{error}");
        let error = merged(&[]).unwrap_err();
        assert!(error.to_string().starts_with("interfaces:"), "{error}");
        let error = merged(&["--iface", "a", "--max-bindings", "100"]).unwrap_err();
        assert!(error.to_string().starts_with("max_bindings:"), "{error}");
        let config = merged(&["--iface", "a", "--max-bindings", "65536"]).unwrap();
        assert_eq!(config.max_bindings, 65_536);
        // The package's default file lists none, and is valid as it is.
        let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/demux.toml");
        let config = merged(&["--config", packaged]).unwrap();
        assert!(config.ifaces.is_empty());
    }
}
