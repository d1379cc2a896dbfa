//! Keeps the request workers' connection counts level.
//!
//! Every worker accepts from the one shared listening socket, and a worker woken for a burst of
//! connections accepts all that are queued: 32 connections opened at once used to land on one
//! worker, which then served them alone while the other CPU idled (under `wrk -c32`, one worker at
//! 77–82 % of a CPU and the other under 5 %, in three runs of four). So an accepting worker keeps a
//! connection only when no other worker serves fewer; otherwise it hands the socket to the one
//! serving the fewest (least connections), which serves it from then on. A handed-over
//! connection costs one message and its re-registration with the other worker's poller, once per
//! connection; its requests still never cross threads.
//!
//! `rampart_http_connections{worker}` shows each worker's open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// A connection accepted by one worker for another, counted against the other already.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) seat: Seat,
}

#[derive(Debug)]
struct Count {
    open: AtomicUsize,
    gauge: metrics::Gauge,
}

/// The workers' open connection counts and the inboxes of handed-over connections.
#[derive(Debug)]
pub(crate) struct Balancer {
    counts: Box<[Count]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// One open connection, counted against its worker until dropped.
#[derive(Debug)]
pub(crate) struct Seat {
    balancer: Arc<Balancer>,
    worker: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let count = &self.balancer.counts[self.worker];
        count.open.fetch_sub(1, Ordering::Relaxed);
        count.gauge.decrement(1.0);
    }
}

impl Balancer {
    /// A balancer for `workers` workers and each worker's inbox, in worker order.
    pub(crate) fn new(workers: usize) -> (Arc<Balancer>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let counts = (0..workers)
            .map(|i| {
                let gauge = metrics::gauge!("rampart_http_connections", "worker" => i.to_string());
                gauge.set(0.0);
                Count {
                    open: AtomicUsize::new(0),
                    gauge,
                }
            })
            .collect();
        let balancer = Balancer {
            counts,
            inboxes: senders.into_boxed_slice(),
        };
        (Arc::new(balancer), receivers)
    }

    /// The worker that serves a connection `me` accepted: `me`, unless another worker serves
    /// fewer connections (then the first of those serving the fewest).
    pub(crate) fn pick(&self, me: usize) -> usize {
        let mut best = me;
        let mut fewest = self.counts[me].open.load(Ordering::Relaxed);
        for (i, count) in self.counts.iter().enumerate() {
            let open = count.open.load(Ordering::Relaxed);
            if open < fewest {
                (best, fewest) = (i, open);
            }
        }
        best
    }

    /// Count a connection against `worker`.
    pub(crate) fn seat(self: &Arc<Self>, worker: usize) -> Seat {
        let count = &self.counts[worker];
        count.open.fetch_add(1, Ordering::Relaxed);
        count.gauge.increment(1.0);
        Seat {
            balancer: self.clone(),
            worker,
        }
    }

    /// Hand a connection to worker `to`; given back when that worker has stopped taking them.
    pub(crate) fn hand_over(
        self: &Arc<Self>,
        to: usize,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Result<(), std::net::TcpStream> {
        let handoff = Handoff {
            stream,
            peer,
            seat: self.seat(to),
        };
        self.inboxes[to].send(handoff).map_err(|e| e.0.stream)
    }

    /// Open connections per worker, in worker order.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.open.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_accepted_by_one_worker_is_spread_evenly() {
        let (balancer, _inboxes) = Balancer::new(3);
        let mut seats = Vec::new();
        for _ in 0..31 {
            // Worker 0 accepts every connection of the burst.
            let to = balancer.pick(0);
            seats.push(balancer.seat(to));
        }
        assert_eq!(balancer.open(), vec![11, 10, 10]);
        // Connections that close free their seats; the next ones fill the gap.
        seats.retain(|s| s.worker != 1);
        assert_eq!(balancer.open(), vec![11, 0, 10]);
        assert_eq!(balancer.pick(0), 1);
        assert_eq!(balancer.pick(2), 1);
    }

    #[test]
    fn an_accepting_worker_keeps_the_connection_on_a_tie() {
        let (balancer, _inboxes) = Balancer::new(2);
        let _a = balancer.seat(0);
        let _b = balancer.seat(1);
        assert_eq!(balancer.pick(1), 1);
        assert_eq!(balancer.pick(0), 0);
    }

    #[test]
    fn a_stopped_worker_gives_the_connection_back() {
        let (balancer, mut inboxes) = Balancer::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (stream, peer) = listener.accept().expect("accept");
        inboxes[1].close();
        let back = balancer
            .hand_over(1, stream, peer)
            .expect_err("inbox closed");
        assert_eq!(back.peer_addr().expect("peer"), peer);
        // The seat taken for the hand-over was released with the message.
        assert_eq!(balancer.open(), vec![0, 0]);
    }
}
