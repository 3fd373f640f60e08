//! The interfaces the program is attached to, each with its AF_XDP sockets and their queue
//! workers: brought up at start and on reload (sockets and workers first, then the interface's
//! MAC in `IFACE_SLOTS`, then the attach, so no steered frame arrives before its queue has a
//! socket), and taken down on reload and at shutdown (detach first, so every later packet goes
//! to the kernel, then the workers drain their rings and end).
//!
//! Each interface has a number (0 to `MAX_IFACES - 1`): its block of XSKMAP slots. A number is
//! free again once its interface is down (its sockets close with their workers, and the kernel
//! takes a closed AF_XDP socket out of the XSKMAP). A detached interface's `IFACE_SLOTS` entry
//! stays: the program no longer runs there, and attaching again writes it anew. Its sockets'
//! counters stay in `stats` too, so the accounting still adds up.

use std::{
    sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::Context as _;
use demux_common::maps::MAX_IFACES;
use tracing::{info, warn};

use super::{state::State, worker};
use crate::{
    attach::{attach_loaded, ifindex, AttachMode, Attachment},
    control::SocketInfo,
    dataplane::Dataplane as _,
    program::Loaded,
    zero_copy::ZeroCopy,
};

/// One attached interface.
struct Iface {
    name: String,
    number: u32,
    attachment: Option<Attachment>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// The interfaces the program is attached to.
pub struct Ifaces {
    up: Vec<Iface>,
    frames: u32,
    mode: AttachMode,
    zero_copy: ZeroCopy,
}

/// Workers told to stop: joined off the runtime ([`Stopping::join`]).
#[must_use = "join the workers so that they drain their rings"]
pub struct Stopping(Vec<JoinHandle<()>>);

impl Stopping {
    /// Waits for the workers to drain their rings and end (blocking: call it from a blocking
    /// thread, or at shutdown).
    pub fn join(self) {
        for worker in self.0 {
            let _ = worker.join();
        }
    }
}

impl Ifaces {
    /// None yet; interfaces brought up later get `frames` UMEM frames per rx queue, bind their
    /// sockets as `zero_copy` decides, and attach in `mode`.
    pub fn new(frames: u32, mode: AttachMode, zero_copy: ZeroCopy) -> Self {
        Self {
            up: Vec::new(),
            frames,
            mode,
            zero_copy,
        }
    }

    /// The interfaces, in the order they came up.
    pub fn names(&self) -> Vec<String> {
        self.up.iter().map(|i| i.name.clone()).collect()
    }

    /// Opens a socket and starts a worker for every rx queue of `name`, registers the sockets,
    /// writes the interface's MAC address and attaches the program. On failure nothing of it
    /// stays (the workers started end by themselves).
    pub fn bring_up(
        &mut self,
        name: &str,
        loaded: &mut Loaded,
        state: &Mutex<State>,
    ) -> anyhow::Result<()> {
        // An unknown interface fails here, with its own clear line.
        let index = ifindex(name)?;
        anyhow::ensure!(
            !self.up.iter().any(|i| i.name == name),
            "interface {name} is attached already"
        );
        let number = (0..MAX_IFACES)
            .find(|n| !self.up.iter().any(|i| i.number == *n))
            .with_context(|| {
                format!("interface {name}: the program serves at most {MAX_IFACES} interfaces")
            })?;
        let mut iface = Iface {
            name: name.to_owned(),
            number,
            attachment: None,
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let result = self.start(&mut iface, index, loaded, state);
        if result.is_err() {
            iface.stop.store(true, Relaxed);
        } else {
            self.up.push(iface);
        }
        result
    }

    fn start(
        &self,
        iface: &mut Iface,
        index: u32,
        loaded: &mut Loaded,
        state: &Mutex<State>,
    ) -> anyhow::Result<()> {
        let name = iface.name.clone();
        let queues = 0..super::rx_queues(&name);
        let zero_copy = self.zero_copy.bind_mode(&name, queues.clone());
        if zero_copy.host_traffic {
            info!(
                "zero-copy not used on {name}: the queue also carries the host's traffic (copy \
                 mode; `--zero-copy on` forces it)"
            );
        }
        {
            let mut state = state.lock().expect("state lock");
            // Workers of an earlier bring-up of this name are gone with it.
            state.forget_queues(&name);
            for queue in queues {
                let cell = Arc::new(Mutex::new(SocketInfo {
                    iface: name.clone(),
                    queue,
                    ..SocketInfo::default()
                }));
                let slot = loaded
                    .socket_slot(iface.number, queue)
                    .with_context(|| format!("the socket slot of {name} queue {queue}"))?;
                let (worker, fd, frame_limit, control) = worker::spawn(
                    &name,
                    queue,
                    self.frames,
                    zero_copy.bind,
                    state.directory.clone(),
                    state.workers.clone(),
                    cell.clone(),
                    iface.stop.clone(),
                    slot,
                )?;
                iface.workers.push(worker);
                state.add_socket(cell);
                state.add_queue(control);
                loaded
                    .register_socket(iface.number, queue, fd, frame_limit)
                    .with_context(|| format!("registering the socket of {name} queue {queue}"))?;
            }
        }
        let mac = crate::sys::netlink::hardware_address(&name)
            .with_context(|| format!("reading the MAC address of {name} (SIOCGIFHWADDR)"))?;
        state
            .lock()
            .expect("state lock")
            .dataplane_mut()
            .set_iface(index, iface.number, mac)
            .with_context(|| format!("writing the MAC address of {name} to IFACE_SLOTS"))?;
        let attachment = attach_loaded(loaded, &name, self.mode)?;
        info!(iface = %attachment.iface, mode = %attachment.mode, "attached");
        iface.attachment = Some(attachment);
        Ok(())
    }

    /// Detaches the program from `name` and tells its workers to drain and stop; `None` if it
    /// is not attached.
    pub fn take_down(&mut self, name: &str, loaded: &mut Loaded) -> Option<Stopping> {
        let at = self.up.iter().position(|i| i.name == name)?;
        let mut iface = self.up.remove(at);
        detach(&mut iface, loaded);
        iface.stop.store(true, Relaxed);
        Some(Stopping(iface.workers))
    }

    /// Detaches the program from every interface first (from then on every packet goes to the
    /// kernel), then tells every worker to drain and stop.
    pub fn shut_down(mut self, loaded: &mut Loaded) -> Stopping {
        for iface in &mut self.up {
            detach(iface, loaded);
        }
        let mut workers = Vec::new();
        for iface in self.up {
            iface.stop.store(true, Relaxed);
            workers.extend(iface.workers);
        }
        Stopping(workers)
    }
}

fn detach(iface: &mut Iface, loaded: &mut Loaded) {
    if let Some(link) = iface.attachment.take() {
        let name = link.iface.clone();
        match crate::attach::detach(loaded, link) {
            Ok(()) => info!(iface = %name, "detached"),
            Err(e) => warn!(iface = %name, "detaching failed: {e}"),
        }
    }
}
