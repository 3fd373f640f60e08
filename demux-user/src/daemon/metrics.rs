//! `--metrics ADDR`: the statistics in OpenMetrics text format (prometheus-client), served over
//! plain HTTP at any path. Each scrape encodes a fresh snapshot of `View::stats()`, which takes
//! no lock a bind or close holds.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;

use super::view::View;
use crate::control::Stats;

type Labels = Vec<(String, String)>;

fn family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

fn label(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The OpenMetrics text for one snapshot.
pub fn encode(stats: &Stats) -> String {
    let mut registry = Registry::default();
    family(
        &mut registry,
        "demux_verdicts",
        "Packets the XDP program saw, by verdict",
        stats
            .verdicts
            .iter()
            .map(|(v, n)| (label(&[("verdict", v.clone())]), *n)),
    );
    let endpoint = |id: u32| ("endpoint", id.to_string());
    family(
        &mut registry,
        "demux_endpoint_redirected",
        "Packets the XDP program redirected to the endpoint",
        stats
            .endpoints
            .iter()
            .map(|e| (label(&[endpoint(e.id)]), e.redirected)),
    );
    family(
        &mut registry,
        "demux_endpoint_delivered",
        "Datagrams delivered to the endpoint's sink",
        stats
            .endpoints
            .iter()
            .map(|e| (label(&[endpoint(e.id)]), e.delivered)),
    );
    family(
        &mut registry,
        "demux_endpoint_delivered_bytes",
        "Payload bytes delivered to the endpoint's sink",
        stats
            .endpoints
            .iter()
            .map(|e| (label(&[endpoint(e.id)]), e.delivered_bytes)),
    );
    family(
        &mut registry,
        "demux_endpoint_dropped",
        "Datagrams the endpoint's sink did not take, by reason",
        stats.endpoints.iter().flat_map(|e| {
            [
                (
                    label(&[endpoint(e.id), ("reason", "sink_full".into())]),
                    e.dropped_sink_full,
                ),
                (
                    label(&[endpoint(e.id), ("reason", "sink_error".into())]),
                    e.dropped_sink_error,
                ),
            ]
        }),
    );
    let socket = |s: &crate::control::SocketInfo, what: &str| {
        label(&[
            ("iface", s.iface.clone()),
            ("queue", s.queue.to_string()),
            ("reason", what.into()),
        ])
    };
    family(
        &mut registry,
        "demux_socket_rx_dropped",
        "AF_XDP socket counters (XDP_STATISTICS)",
        stats.sockets.iter().flat_map(|s| {
            [
                (socket(s, "rx_dropped"), s.rx_dropped),
                (socket(s, "rx_ring_full"), s.rx_ring_full),
                (socket(s, "fill_ring_empty"), s.rx_fill_ring_empty),
            ]
        }),
    );
    family(
        &mut registry,
        "demux_socket_handed_to_client",
        "Frames the kernel put on a leased AF_XDP socket's rx ring for its fast-path client \
         (the ring's producer index: the client's own figure)",
        stats.sockets.iter().map(|s| {
            (
                label(&[("iface", s.iface.clone()), ("queue", s.queue.to_string())]),
                s.handed_to_client,
            )
        }),
    );
    // Where each socket's UMEM frames are: while nothing is being received, the three add up
    // to the socket's frames (a frame missing from all three is lost).
    let frames = Family::<Labels, Gauge>::default();
    for s in &stats.sockets {
        for (place, n) in [
            ("free_list", s.frames_free),
            ("fill_ring", s.frames_fill_ring),
            ("rx_ring", s.frames_rx_ring),
        ] {
            let labels = label(&[
                ("iface", s.iface.clone()),
                ("queue", s.queue.to_string()),
                ("place", place.into()),
            ]);
            frames
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "demux_socket_frames",
        "UMEM frames of an AF_XDP socket by where they are (of `frames` per queue)",
        frames,
    );
    family(
        &mut registry,
        "demux_worker_dropped",
        "Frames a queue worker could not deliver, by reason",
        [
            (
                label(&[("reason", "no_endpoint".into())]),
                stats.dropped_no_endpoint,
            ),
            (
                label(&[("reason", "bad_metadata".into())]),
                stats.dropped_bad_metadata,
            ),
            (
                label(&[("reason", "bad_checksum".into())]),
                stats.dropped_bad_checksum,
            ),
            (
                label(&[("reason", "bad_chain".into())]),
                stats.dropped_bad_chain,
            ),
        ],
    );
    let mut out = String::new();
    text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Answers every HTTP request on `listener` with the current metrics.
pub async fn serve(listener: TcpListener, view: Arc<View>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let view = view.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 4096];
            // The request itself does not matter; read what arrives first, bounded in time.
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut request)).await;
            let body = encode(&view.stats());
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; \
                 charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                warn!("answering a metrics scrape: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_encodes_as_openmetrics() {
        let mut stats = Stats::default();
        stats.verdicts.insert("redirected".into(), 3);
        stats.dropped_no_endpoint = 2;
        stats.dropped_bad_checksum = 5;
        stats.sockets.push(crate::control::SocketInfo {
            iface: "veth0".into(),
            frames: 4096,
            frames_free: 6,
            frames_fill_ring: 4090,
            handed_to_client: 7,
            ..Default::default()
        });
        let text = encode(&stats);
        assert!(
            text.contains(
                "demux_socket_frames{iface=\"veth0\",queue=\"0\",place=\"fill_ring\"} 4090"
            ),
            "{text}"
        );
        assert!(
            text.contains("demux_verdicts_total{verdict=\"redirected\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("demux_worker_dropped_total{reason=\"no_endpoint\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("demux_worker_dropped_total{reason=\"bad_checksum\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("demux_socket_handed_to_client_total{iface=\"veth0\",queue=\"0\"} 7"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
