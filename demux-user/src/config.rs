//! The daemon's one configuration: [`Config`], read from a TOML file (`demux daemon --config
//! FILE`), overridden by command-line flags through one merge (`src/cli/daemon.rs`), checked
//! by [`Config::validate`], and handed to [`crate::daemon::run`]. Defaults live in one place,
//! [`Config::default`], which the CLI's help shows too. The file format, with every key, is in
//! `docs/CONFIG.md`; `docs/demux.toml` is an example that the tests parse.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::{
    attach::{AttachMode, Sharing},
    control::{BindRequest, SinkSpec, DEFAULT_SOCKET},
    program::BpfLogLevel,
    zero_copy::ZeroCopy,
};

/// The smallest and largest UMEM frame counts per rx queue.
pub const FRAMES: std::ops::RangeInclusive<u32> = 64..=1 << 20;

/// The smallest and largest size of each binding hash table and trie (`max_bindings`).
pub const MAX_BINDINGS: std::ops::RangeInclusive<u32> = 1024..=1 << 24;

/// Everything the daemon needs to start.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Interfaces to attach the XDP program to (`interfaces` in the file).
    #[serde(rename = "interfaces")]
    pub ifaces: Vec<String>,
    /// XDP attach mode.
    pub mode: AttachMode,
    /// Whether the program owns the interface's XDP slot or shares it through libxdp's
    /// dispatcher.
    pub xdp_mode: Sharing,
    /// The control socket's path.
    pub control: PathBuf,
    /// The group that may use the control socket (mode 0660).
    pub control_group: Option<String>,
    /// How often the verdicts are logged; zero turns it off.
    #[serde(deserialize_with = "duration")]
    pub stats_interval: Duration,
    /// Log level of the XDP program's own records.
    pub bpf_log: BpfLogLevel,
    /// UMEM frames per rx queue (a power of two in [`FRAMES`]).
    pub frames: u32,
    /// Serve OpenMetrics here.
    pub metrics: Option<SocketAddr>,
    /// Entries of each binding table with keys (`CONNECTED`, `BOUND`, `PREFIX`), set at load
    /// (in [`MAX_BINDINGS`]); wildcard bindings need none (one per port always fits).
    pub max_bindings: u32,
    /// Endpoints to create at start (persistent, owned by root; `[[endpoint]]` in the file).
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<BindRequest>,
    /// What one caller of the control socket may hold (`[limits]` in the file).
    pub limits: Limits,
    /// The uid that may lease an interface's queues for a fast path (see "The fast path" in
    /// docs/ARCHITECTURE.md); none: no lease is ever granted.
    pub fast_path_uid: Option<u32>,
    /// Whether the AF_XDP sockets bind in zero-copy mode (`auto`: only on a queue that carries
    /// no host traffic, which today is none; see [`crate::zero_copy`]).
    pub zero_copy: ZeroCopy,
}

/// What the callers of the control socket may hold (`[limits]` in the file). Every refusal is
/// answered with the `limit_reached` code and names its key (`limits.KEY`).
///
/// uid 0 is exempt from the counts (endpoints, ring memory, connections): root administers
/// the machine already, and a daemon full of other users' connections must still let it in to
/// clean up. Its connections count toward the others' total all the same. The idle time
/// applies to every caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Endpoints one uid may hold, persistent ones included (`0`: none).
    pub endpoints_per_uid: u32,
    /// Bytes of ring memory one uid's endpoints may hold, counted as slots × slot size
    /// (`0`: no rings).
    pub ring_bytes_per_uid: u64,
    /// Control connections one uid may have open at once (at least 1).
    pub connections_per_uid: u32,
    /// Control connections open at once, all uids together (at least 1).
    pub connections: u32,
    /// A connection without an endpoint that closes with it is closed after this long without
    /// a request; zero never closes it.
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            endpoints_per_uid: 256,
            ring_bytes_per_uid: 256 << 20,
            connections_per_uid: 64,
            connections: 1024,
            idle: Duration::from_secs(60),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ifaces: Vec::new(),
            mode: AttachMode::Auto,
            xdp_mode: Sharing::Auto,
            control: DEFAULT_SOCKET.into(),
            control_group: None,
            stats_interval: Duration::from_secs(5),
            bpf_log: BpfLogLevel::Off,
            frames: 4096,
            metrics: None,
            max_bindings: demux_common::binding::MAX_BINDINGS,
            endpoints: Vec::new(),
            limits: Limits::default(),
            fast_path_uid: None,
            zero_copy: ZeroCopy::Auto,
        }
    }
}

/// A configuration that cannot be used, naming the file or field and the fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why reading failed.
        cause: std::io::Error,
    },
    /// The text is not valid TOML for this format (the message names line and field).
    #[error("{0}")]
    Syntax(String),
    /// As `Syntax`, in a file.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's message, on one line.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{field}: {message}")]
    Invalid {
        /// The key (file) or flag (command line).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl Config {
    /// Reads a config file (not yet validated: flags may still change it).
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ConfigError::Syntax(message) => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text; the error names the line and the field.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim_end().replace('\n', " ")))
    }

    /// Checks what the types alone cannot: the frame count, each configured endpoint's binding
    /// and sink, and room for at least one connection. No interface is valid (the Debian
    /// package's default file lists none: the daemon starts and steers nothing); the command
    /// line alone must name one (`DaemonArgs::merge`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            field: field.into(),
            message,
        };
        if !self.frames.is_power_of_two() || !FRAMES.contains(&self.frames) {
            return Err(invalid(
                "frames",
                format!(
                    "{} is not a power of two from {} to {}",
                    self.frames,
                    FRAMES.start(),
                    FRAMES.end()
                ),
            ));
        }
        if !MAX_BINDINGS.contains(&self.max_bindings) {
            return Err(invalid(
                "max_bindings",
                format!(
                    "{} is not from {} to {}",
                    self.max_bindings,
                    MAX_BINDINGS.start(),
                    MAX_BINDINGS.end()
                ),
            ));
        }
        for (field, value) in [
            (
                "limits.connections_per_uid",
                self.limits.connections_per_uid,
            ),
            ("limits.connections", self.limits.connections),
        ] {
            if value == 0 {
                return Err(invalid(
                    field,
                    "0 would refuse every connection: give at least 1 (to keep users out, \
                     leave out `control_group`)"
                        .into(),
                ));
            }
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let field = format!("endpoint {}", i + 1);
            endpoint
                .binding()
                .map_err(|e| invalid(&field, e.to_string()))?;
            if matches!(endpoint.to, SinkSpec::Ring { .. }) {
                return Err(invalid(
                    &field,
                    "to: a ring goes to a client over the control socket; configured endpoints \
                     use unix:PATH, count or pcap:PATH"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Parses `0`, `250ms`, `5s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || format!("`{text}` is not a duration: write e.g. 500ms, 5s or 2m (0 for never)");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(err()),
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file() {
        let config = Config::parse(
            r#"
            interfaces = ["veth0", "veth1"]
            mode = "skb"
            stats_interval = "1s"
            bpf_log = "warn"
            [[endpoint]]
            protocol = "udp"
            local = "0.0.0.0:53"
            to = "count"
            "#,
        )
        .unwrap();
        assert_eq!(config.ifaces, ["veth0", "veth1"]);
        assert_eq!(config.mode, AttachMode::Skb);
        assert_eq!(config.stats_interval, Duration::from_secs(1));
        assert_eq!(config.bpf_log, BpfLogLevel::Warn);
        assert_eq!(config.endpoints.len(), 1);
        // Keys left out keep their defaults.
        assert_eq!(config.frames, Config::default().frames);
        assert_eq!(config.control, Config::default().control);
        config.validate().unwrap();
    }

    #[test]
    fn the_documented_example_is_valid() {
        let config = Config::parse(include_str!("../../docs/demux.toml")).unwrap();
        config.validate().unwrap();
        assert!(!config.endpoints.is_empty());
        assert_eq!(
            config.limits,
            Limits::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let text = |toml: &str| Config::parse(toml).unwrap_err().to_string();
        // An unknown key inside an endpoint is an error too, not ignored.
        let error = text(
            "interfaces = [\"a\"]\n[[endpoint]]\nprotocol = \"udp\"\nlocal = \"0.0.0.0:53\"\n\
             to = \"count\"\npersistant = true\n",
        );
        assert!(
            error.contains("line 6") && error.contains("persistant"),
            "{error}"
        );
        let error = text("interfaces = [\"a\"]\nmod = \"skb\"\n");
        assert!(error.contains("line 2") && error.contains("mod"), "{error}");
        let error = text("mode = \"fast\"\n");
        assert!(
            error.contains("line 1") && error.contains("fast"),
            "{error}"
        );
        let error = text("stats_interval = \"5h\"\n");
        assert!(error.contains("5h"), "{error}");
        // The key, the value and the three it may be.
        let error = text("interfaces = [\"a\"]\nzero_copy = \"yes\"\n");
        assert!(
            error.contains("line 2")
                && error.contains("zero_copy")
                && error.contains("yes")
                && ["auto", "on", "off"].iter().all(|w| error.contains(w)),
            "{error}"
        );
        let error = text("zero_copy = true\n");
        assert!(error.contains("zero_copy"), "{error}");
    }

    #[test]
    fn zero_copy_is_auto_unless_the_file_says() {
        assert_eq!(Config::default().zero_copy, ZeroCopy::Auto);
        assert_eq!(Config::parse("").unwrap().zero_copy, ZeroCopy::Auto);
        for (word, setting) in [
            ("auto", ZeroCopy::Auto),
            ("on", ZeroCopy::On),
            ("off", ZeroCopy::Off),
        ] {
            let config = Config::parse(&format!("zero_copy = \"{word}\"\n")).unwrap();
            assert_eq!(config.zero_copy, setting);
        }
    }

    fn with_bindings(max_bindings: u32) -> Result<(), String> {
        Config {
            ifaces: vec!["veth0".into()],
            max_bindings,
            ..Config::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }

    #[test]
    fn validate_names_the_field() {
        let with = |change: fn(&mut Config)| {
            let mut config = Config {
                ifaces: vec!["veth0".into()],
                ..Config::default()
            };
            change(&mut config);
            config.validate().map_err(|e| e.to_string())
        };
        assert_eq!(with(|_| {}), Ok(()));
        for max_bindings in [0, 1023, (1 << 24) + 1] {
            let error = with_bindings(max_bindings).unwrap_err();
            assert!(error.starts_with("max_bindings:"), "{error}");
        }
        assert_eq!(with_bindings(1024), Ok(()));
        assert_eq!(
            with(|c| c.ifaces.clear()),
            Ok(()),
            "a file may list no interface"
        );
        for frames in [1000, 32, 1 << 21] {
            let error = Config {
                ifaces: vec!["x".into()],
                frames,
                ..Config::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(error.starts_with("frames:"), "{error}");
        }
        let error = Config::parse(
            "interfaces = [\"x\"]\n[[endpoint]]\nprotocol = \"udp\"\nlocal = \"nowhere\"\n\
             to = \"count\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("endpoint 1:") && error.contains("local address"),
            "{error}"
        );
        let error = Config::parse(
            "interfaces = [\"x\"]\n[[endpoint]]\nprotocol = \"udp\"\nlocal = \"0.0.0.0:5\"\n\
             to = \"ring\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(error.contains("ring"), "{error}");
    }

    #[test]
    fn limits_come_from_their_table_and_zero_connections_are_refused() {
        let config = Config::parse(
            "interfaces = [\"x\"]\n[limits]\nendpoints_per_uid = 2\nring_bytes_per_uid = 0\n\
             idle = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(config.limits.endpoints_per_uid, 2);
        assert_eq!(config.limits.ring_bytes_per_uid, 0);
        assert_eq!(config.limits.idle, Duration::from_secs(1));
        // Keys left out keep their defaults.
        assert_eq!(config.limits.connections, Limits::default().connections);
        config.validate().unwrap();
        let error = Config::parse("[limits]\nendpoints = 2\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("endpoints"), "{error}");
        for key in ["connections_per_uid", "connections"] {
            let error = Config::parse(&format!("interfaces = [\"x\"]\n[limits]\n{key} = 0\n"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&format!("limits.{key}:")), "{error}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
