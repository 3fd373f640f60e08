//! The daemon's config file (TOML, `demux daemon --config FILE`): interfaces, control socket,
//! and endpoints to create at start. Unknown fields are errors, and every error names the line,
//! the field and what is allowed (the toml crate's messages carry all three).
//!
//! ```toml
//! interfaces = ["eth0"]
//! mode = "auto"                       # auto | driver | skb
//! control = "/run/demux/control.sock"
//! control_group = "demux"             # may use the control socket
//! stats_interval = "5s"
//! frames = 4096                       # UMEM frames per rx queue
//! metrics = "127.0.0.1:9464"          # OpenMetrics over HTTP
//!
//! [[endpoint]]
//! protocol = "udp"
//! local = "0.0.0.0:53"
//! to = "unix:/run/dns.sock"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{attach::AttachMode, control::BindRequest};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub mode: Option<AttachMode>,
    pub control: Option<PathBuf>,
    pub control_group: Option<String>,
    pub stats_interval: Option<String>,
    pub frames: Option<u32>,
    pub metrics: Option<std::net::SocketAddr>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<BindRequest>,
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<File, String> {
    let file: File =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
    if let Some(frames) = file.frames {
        if !frames.is_power_of_two() || !(64..=1 << 20).contains(&frames) {
            return Err(format!(
                "frames: {frames} is not a power of two from 64 to 1048576"
            ));
        }
    }
    for (i, endpoint) in file.endpoints.iter().enumerate() {
        endpoint
            .local
            .parse::<crate::binding::Local>()
            .map_err(|e| format!("endpoint {}: {e}", i + 1))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file() {
        let file = parse(
            r#"
            interfaces = ["veth0", "veth1"]
            mode = "skb"
            stats_interval = "1s"
            [[endpoint]]
            protocol = "udp"
            local = "0.0.0.0:53"
            to = "count"
            "#,
        )
        .unwrap();
        assert_eq!(file.interfaces, ["veth0", "veth1"]);
        assert_eq!(file.mode, Some(AttachMode::Skb));
        assert_eq!(file.endpoints.len(), 1);
    }

    #[test]
    fn errors_name_line_and_field() {
        let error = parse("interfaces = [\"a\"]\nmod = \"skb\"\n").unwrap_err();
        assert!(error.contains("line 2") && error.contains("mod"), "{error}");
        let error = parse("mode = \"fast\"\n").unwrap_err();
        assert!(
            error.contains("line 1") && error.contains("fast"),
            "{error}"
        );
        let error =
            parse("[[endpoint]]\nprotocol = \"udp\"\nlocal = \"nowhere\"\nto = \"count\"\n")
                .unwrap_err();
        assert!(
            error.contains("endpoint 1") && error.contains("local address"),
            "{error}"
        );
        let error = parse("frames = 1000\n").unwrap_err();
        assert!(error.contains("frames"), "{error}");
    }
}
