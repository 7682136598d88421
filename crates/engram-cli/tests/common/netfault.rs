//! Network faults on loopback: a small TCP proxy in front of each internal
//! port of a test cluster. Every node's internal connections leave from
//! its own loopback address (`cluster.source_address`, 127.0.0.x), so a
//! proxy knows which node each connection comes from, and drops what a
//! fault says: a blocked connection is a black hole (nothing forwarded
//! either way, as with lost packets, so callers time out), and once the
//! fault is lifted it is closed (the caller's next request opens a fresh
//! one). Blocking `a -> b` only is an asymmetric fault: `a` cannot reach
//! `b`, while `b`'s requests to `a` and their answers still flow.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Which directions are cut: `(from, to)` node names.
#[derive(Default)]
struct Table {
    /// Loopback address -> node name.
    nodes: BTreeMap<IpAddr, String>,
    blocked: BTreeSet<(String, String)>,
}

/// The proxies of one cluster and the faults they apply.
#[derive(Clone, Default)]
pub struct NetFaults {
    table: Arc<RwLock<Table>>,
    stop: Arc<AtomicBool>,
}

impl NetFaults {
    /// The loopback address node `name` (number `n` of its kind) sends
    /// from: 127.0.0.1x for coordinators, 127.0.0.2x for workers.
    pub fn source_of(&self, name: &str, coordinator: bool, n: usize) -> IpAddr {
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            if coordinator { 10 } else { 20 } + n as u8,
        ));
        self.table
            .write()
            .unwrap()
            .nodes
            .insert(ip, name.to_string());
        ip
    }

    /// Starts a proxy to node `to` at `127.0.0.1:target`; returns the port
    /// it listens on (the first free one it could bind).
    pub fn proxy(&self, target: u16, to: &str) -> u16 {
        let (listener, listen) = loop {
            let port = super::cluster::free_port();
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                break (listener, port);
            }
        };
        listener.set_nonblocking(true).unwrap();
        let (faults, to) = (self.clone(), to.to_string());
        std::thread::spawn(move || {
            while !faults.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, peer)) => {
                        let from = faults.name_of(peer.ip());
                        let faults = faults.clone();
                        let to = to.clone();
                        std::thread::spawn(move || faults.carry(inbound, target, from, to));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        listen
    }

    fn name_of(&self, ip: IpAddr) -> String {
        self.table
            .read()
            .unwrap()
            .nodes
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| ip.to_string())
    }

    fn blocked(&self, from: &str, to: &str) -> bool {
        self.table
            .read()
            .unwrap()
            .blocked
            .contains(&(from.to_string(), to.to_string()))
    }

    /// Forwards one connection both ways while `from -> to` is open; holds
    /// it while blocked, and closes it once a block that held it is lifted.
    fn carry(&self, inbound: TcpStream, target: u16, from: String, to: String) {
        if self.blocked(&from, &to) {
            // A black hole until the fault is lifted, then closed.
            while self.blocked(&from, &to) && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
            return; // the node is down: the caller sees the connection close
        };
        let cut = Arc::new(AtomicBool::new(false));
        let pipes = [
            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
            (outbound, inbound),
        ];
        let mut threads = Vec::new();
        for (mut reader, mut writer) in pipes {
            let (faults, from, to, cut) = (self.clone(), from.clone(), to.clone(), cut.clone());
            threads.push(std::thread::spawn(move || {
                reader
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut buffer = vec![0u8; 64 * 1024];
                let mut held = false;
                loop {
                    if cut.load(Ordering::Relaxed) || faults.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if faults.blocked(&from, &to) {
                        held = true;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    if held {
                        break; // bytes were lost meanwhile: the connection is over
                    }
                    match reader.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => {
                            if writer.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                cut.store(true, Ordering::Relaxed);
                let _ = reader.shutdown(Shutdown::Both);
                let _ = writer.shutdown(Shutdown::Both);
            }));
        }
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Cuts `from -> to` (new and open connections).
    pub fn block(&self, from: &str, to: &str) {
        self.table
            .write()
            .unwrap()
            .blocked
            .insert((from.to_string(), to.to_string()));
    }

    /// Cuts `name` off from every other node, both ways.
    pub fn isolate(&self, name: &str) {
        let nodes: Vec<String> = self.table.read().unwrap().nodes.values().cloned().collect();
        for other in nodes.iter().filter(|n| *n != name) {
            self.block(name, other);
            self.block(other, name);
        }
    }

    /// Cuts every connection `name` opens to the others (they still reach
    /// it): one way.
    pub fn mute(&self, name: &str) {
        let nodes: Vec<String> = self.table.read().unwrap().nodes.values().cloned().collect();
        for other in nodes.iter().filter(|n| *n != name) {
            self.block(name, other);
        }
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.table.write().unwrap().blocked.clear();
    }

    /// Stops the proxies (every connection through them closes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
