//! A TCP proxy the checker puts between workers and a server, to fault the connections
//! without touching the server: it can black-hole every open connection (stop forwarding,
//! keep it open, so clients see silence rather than a close) while new connections work, and
//! delay everything it forwards.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy tries to reach the server for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running proxy; dropping it closes every connection.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// The connections being served (numbered as they open).
    connections: Mutex<Connections>,
    /// Every connection numbered below this is black-holed.
    blackholed_below: watch::Sender<u64>,
    /// Added to everything forwarded, each way (nanoseconds).
    delay_ns: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Proxy {
    /// Listen on one port on each of `addrs` (a free one, the same on all) and forward every
    /// connection to `upstream`.
    pub async fn start(addrs: &[IpAddr], upstream: SocketAddr) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            match bind_all(addrs).await {
                Ok((port, bound)) => {
                    let shared = Arc::new(Shared {
                        upstream,
                        connections: Mutex::new(Connections::default()),
                        blackholed_below: watch::Sender::new(0),
                        delay_ns: AtomicU64::new(0),
                        shutdown: watch::Sender::new(false),
                    });
                    let listeners = bound
                        .into_iter()
                        .map(|l| tokio::spawn(accept_loop(l, Arc::clone(&shared))))
                        .collect();
                    return Ok(Self { port, shared, listeners });
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).context("starting the proxy")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop forwarding on every connection open now, for good (they stay open, silent); new
    /// connections are served. Returns how many were black-holed: the connections being
    /// served now (one still connecting to the server included), not those an earlier black
    /// hole silenced.
    pub fn blackhole(&self) -> usize {
        let mut connections = self.shared.connections();
        let below = connections.next;
        self.shared.blackholed_below.send_replace(below);
        let silenced = connections.served.len();
        connections.served.clear();
        silenced
    }

    /// Delay everything forwarded by `delay`, each way, from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ns.store(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

async fn bind_all(addrs: &[IpAddr]) -> anyhow::Result<(u16, Vec<TcpListener>)> {
    let first = addrs.first().context("the proxy needs an address to listen on")?;
    let listener = TcpListener::bind((*first, 0)).await.with_context(|| format!("binding {first}"))?;
    let port = listener.local_addr()?.port();
    let mut bound = vec![listener];
    for addr in &addrs[1..] {
        bound.push(TcpListener::bind((*addr, port)).await.with_context(|| format!("binding {addr}:{port}"))?);
    }
    Ok((port, bound))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(serve(client, Arc::clone(&shared)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The connections a proxy serves.
#[derive(Debug, Default)]
struct Connections {
    /// The next connection's number.
    next: u64,
    /// The connections open and not black-holed (connecting to the server, or forwarding).
    served: BTreeSet<u64>,
}

impl Shared {
    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    // Numbered and counted together, so a black hole sees every connection below its mark.
    let number = {
        let mut connections = shared.connections();
        let number = connections.next;
        connections.next += 1;
        connections.served.insert(number);
        number
    };
    let mut blackholed = shared.blackholed_below.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut shutdown_while_silent = shared.shutdown.subscribe();
    let Ok(Ok(upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.upstream)).await
    else {
        // The server is down: the client sees its connection closed.
        shared.connections().served.remove(&number);
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    // The halves live here, outside the pumps: a black-holed connection keeps them (open and
    // silent) after the pumps are dropped.
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let forward = async {
        tokio::select! {
            () = pump(&mut client_rx, &mut upstream_tx, &shared) => {}
            () = pump(&mut upstream_rx, &mut client_tx, &shared) => {}
        }
    };
    tokio::select! {
        () = forward => {}
        () = until(&mut blackholed, |&below| number < below) => {
            until(&mut shutdown_while_silent, |&down| down).await;
        }
        () = until(&mut shutdown, |&down| down) => {}
    }
    // A black-holed connection was taken out of the count by the black hole.
    shared.connections().served.remove(&number);
}

/// Resolves once the watched value satisfies `f` (or its sender is gone).
async fn until<T>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(f).await;
}

/// Copy from `from` to `to` until either side closes, delaying each chunk as asked.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = shared.delay_ns.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An echo server that answers every line.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> Option<Duration> {
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(started.elapsed())
    }

    #[tokio::test]
    async fn a_black_hole_silences_open_connections_and_serves_new_ones() {
        let proxy = Proxy::start(&[Ipv4Addr::LOCALHOST.into()], echo().await).await.unwrap();
        let mut old = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await.unwrap();
        assert!(round_trip(&mut old).await.is_some());
        assert_eq!(proxy.blackhole(), 1);
        // Silence, not a close: the write succeeds, no answer comes.
        assert_eq!(round_trip(&mut old).await, None);
        let mut new = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await.unwrap();
        assert!(round_trip(&mut new).await.is_some());
    }

    #[tokio::test]
    async fn a_second_black_hole_counts_only_the_connections_it_silenced() {
        let proxy = Proxy::start(&[Ipv4Addr::LOCALHOST.into()], echo().await).await.unwrap();
        let mut first = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await.unwrap();
        assert!(round_trip(&mut first).await.is_some());
        assert_eq!(proxy.blackhole(), 1);
        // The client gives up on its silent connection and opens another, as dlock does.
        drop(first);
        let mut second = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await.unwrap();
        assert!(round_trip(&mut second).await.is_some());
        assert_eq!(proxy.blackhole(), 1, "the second black hole counts the first one's connection again");
        assert_eq!(round_trip(&mut second).await, None);
        assert_eq!(proxy.blackhole(), 0, "nothing was left to silence");
    }

    #[tokio::test]
    async fn a_delay_is_added_each_way() {
        let proxy = Proxy::start(&[Ipv4Addr::LOCALHOST.into()], echo().await).await.unwrap();
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await.unwrap();
        proxy.set_delay(Duration::from_millis(100));
        let rtt = round_trip(&mut s).await.unwrap();
        assert!(rtt >= Duration::from_millis(200), "{rtt:?}");
        proxy.set_delay(Duration::ZERO);
        assert!(round_trip(&mut s).await.unwrap() < Duration::from_millis(150));
    }
}
