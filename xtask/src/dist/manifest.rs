//! The Kubernetes manifests in `dist/k8s` against the systemd unit (`dist/demux.service`,
//! whose capability lines `daemon::privileges` ties to the daemon's load-time set):
//! the DaemonSet must run the same daemon command line with the same capabilities, and keep
//! what docs/DEPLOYMENT.md promises (host network, the seccomp profile, the host's
//! `/run/demux` and `/sys/fs/bpf`, the configuration from a ConfigMap, the metrics port
//! annotated for Prometheus). Unit tests: no root needed.
//!
//! The YAML is read with serde_yaml (a dev-dependency of the xtask only): it turns the
//! multi-document manifest into plain values to walk, as serde_json does for the seccomp
//! profile, without a Kubernetes client library's thousands of generated types.

use std::{collections::BTreeSet, fs};

use serde::Deserialize as _;
use serde_yaml::Value;

use crate::workspace_root;

fn read(path: &str) -> String {
    fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The values of `key=` in the unit file's `[Service]` section, each line's words.
fn unit_values(key: &str) -> Vec<Vec<String>> {
    let unit = read("dist/demux.service");
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(value) = line.strip_prefix(key).and_then(|v| v.strip_prefix('=')) {
                values.push(value.split_whitespace().map(str::to_owned).collect());
            }
        }
    }
    values
}

/// The manifest's documents.
fn manifest() -> Vec<Value> {
    let text = read("dist/k8s/daemonset.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("dist/k8s/daemonset.yaml parses"))
        .filter(|document| !document.is_null())
        .collect()
}

fn kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("dist/k8s/daemonset.yaml has no {kind}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The DaemonSet's `demux` container.
fn container(documents: &[Value]) -> &Value {
    kind(documents, "DaemonSet")["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "demux")
        .expect("a container named demux")
}

#[test]
fn daemonset_runs_the_unit_files_command_line() {
    let exec = unit_values("ExecStart");
    assert_eq!(
        exec.len(),
        1,
        "one ExecStart in dist/demux.service: {exec:?}"
    );
    let documents = manifest();
    assert_eq!(
        strings(&container(&documents)["command"]),
        exec[0],
        "the DaemonSet's command and the unit's ExecStart differ"
    );
}

#[test]
fn daemonset_has_the_unit_files_capabilities_and_no_others() {
    let bounding: BTreeSet<String> = unit_values("CapabilityBoundingSet")
        .concat()
        .into_iter()
        .collect();
    // The unit grants exactly the daemon's load-time set, which the privileged tests start it
    // with (`daemon::privileges::LOAD_TIME`; its unit test reads dist/demux.service).
    assert!(bounding.contains("CAP_BPF"), "{bounding:?}");
    let ambient: BTreeSet<String> = unit_values("AmbientCapabilities")
        .concat()
        .into_iter()
        .collect();
    assert_eq!(
        ambient, bounding,
        "the unit's ambient and bounding sets differ"
    );
    let documents = manifest();
    let security = &container(&documents)["securityContext"];
    let added: BTreeSet<String> = strings(&security["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(added, bounding, "the DaemonSet adds other capabilities");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
}

#[test]
fn daemonset_keeps_the_deployment_rules() {
    let documents = manifest();
    let pod = &kind(&documents, "DaemonSet")["spec"]["template"];
    assert_eq!(
        pod["spec"]["hostNetwork"], true,
        "clients share the host's namespace"
    );
    let container = container(&documents);
    let seccomp = &container["securityContext"]["seccompProfile"];
    assert_eq!(seccomp["type"], "Localhost");
    assert!(
        seccomp["localhostProfile"]
            .as_str()
            .is_some_and(|p| p.ends_with("/seccomp-demux.json")),
        "{seccomp:?}"
    );
    // Each volume mount, with the volume it mounts.
    let volumes = pod["spec"]["volumes"].as_sequence().expect("volumes");
    let mounted = |path: &str| {
        let mount = container["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]))
            .clone()
    };
    assert_eq!(mounted("/run/demux")["hostPath"]["path"], "/run/demux");
    assert_eq!(mounted("/sys/fs/bpf")["hostPath"]["path"], "/sys/fs/bpf");
    // The configuration the command line names comes from the ConfigMap.
    let command = strings(&container["command"]);
    let config = command
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("the command names --config");
    let (dir, file) = config.rsplit_once('/').expect("a path");
    let map_name = &mounted(dir)["configMap"]["name"];
    let map = documents
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == *map_name)
        .expect("the mounted ConfigMap is in the manifest");
    let toml = map["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
    // The metrics port: served by the config, declared by the container, annotated.
    let port = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics = \""))
        .and_then(|v| v.trim_end_matches('"').rsplit_once(':'))
        .map(|(_, port)| port.to_owned())
        .expect("the ConfigMap serves metrics");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.as_str())
    );
    let declared = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .any(|p| p["containerPort"].as_u64().map(|p| p.to_string()) == Some(port.clone()));
    assert!(declared, "the container does not declare port {port}");
}

#[test]
fn seccomp_profile_denies_by_default_and_allows_bpf() {
    let text = read("dist/k8s/seccomp-demux.json");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed = super::seccomp_allowed().unwrap();
    for call in ["bpf", "socket", "setsockopt", "mmap", "sendmsg", "recvmsg"] {
        assert!(allowed.contains(call), "the profile does not allow {call}");
    }
    for call in [
        "ptrace",
        "kexec_load",
        "init_module",
        "mount",
        "setns",
        "unshare",
    ] {
        assert!(!allowed.contains(call), "the profile allows {call}");
    }
}
