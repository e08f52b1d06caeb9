//! [`BlackHoleProxy`]: a TCP proxy whose connections can be made to go silent, as a dead host
//! or a NAT that forgot the flow would, or to hold back what their clients send (a slow path:
//! retransmissions, a buffering middlebox) and deliver it later, while new connections work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy (to Redis, PostgreSQL, any TCP server) that can make every connection open so far go silent (bytes are
/// swallowed, nothing is closed: a dead host, a NAT that forgot the flow) while new
/// connections work.
pub struct BlackHoleProxy {
    port: u16,
    /// Connections accepted before this generation are silent.
    silenced_before: Arc<AtomicUsize>,
    /// Which connections hold back what their clients send.
    held: watch::Sender<Held>,
    accepted: Arc<AtomicUsize>,
    /// How many bytes clients sent that are held back now.
    held_bytes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHoleProxy {
    /// Listen on a free loopback port, forwarding each connection to `upstream` on loopback.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let silenced_before = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = watch::Sender::new(Held::default());
        let held_bytes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (silenced_before, accepted) = (Arc::clone(&silenced_before), Arc::clone(&accepted));
            let held = held.clone();
            let held_bytes = Arc::clone(&held_bytes);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let n = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                    let silent = {
                        let silenced_before = Arc::clone(&silenced_before);
                        move || n < silenced_before.load(Ordering::SeqCst)
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let hold = Hold { n, held: held.subscribe(), bytes: Arc::clone(&held_bytes) };
                    tokio::spawn(pump(client_read, server_write, silent.clone(), Some(hold)));
                    tokio::spawn(pump(server_read, client_write, silent, None));
                }
            }
        });
        Self { port, silenced_before, held, accepted, held_bytes, task }
    }

    /// Where it listens.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://` at the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every connection open now goes silent.
    pub fn black_hole(&self) {
        self.silenced_before.store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Every connection open now holds back what its client sends from now on (the server
    /// gets none of it, the client sees nothing wrong), until [`deliver_held`](Self::deliver_held).
    /// A client that closes meanwhile still has its bytes delivered then, as a network
    /// delivers a closed connection's last bytes.
    pub fn hold(&self) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.held.send_modify(|held| held.before = accepted);
    }

    /// Deliver what was held back since [`hold`](Self::hold), and stop holding (connections
    /// held by [`hold_next`](Self::hold_next) go on holding).
    pub fn deliver_held(&self) {
        self.held.send_modify(|held| held.before = 0);
    }

    /// The next `count` connections accepted hold back what their clients send from the
    /// start (a connection whose bytes a slow path holds up, such as PostgreSQL's cancel
    /// request), until [`deliver_next`](Self::deliver_next).
    pub fn hold_next(&self, count: usize) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.held.send_modify(|held| held.next = accepted..accepted + count);
    }

    /// Deliver what the connections held by [`hold_next`](Self::hold_next) held back, and stop
    /// holding them.
    pub fn deliver_next(&self) {
        self.held.send_modify(|held| held.next = 0..0);
    }

    /// How many bytes that clients sent it holds back now (see [`hold`](Self::hold)): a
    /// command was sent once they grow.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::SeqCst)
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which connections hold back what their clients send, by number: those accepted before
/// `before`, and those in `next`.
#[derive(Default)]
struct Held {
    before: usize,
    next: std::ops::Range<usize>,
}

/// Holding back one connection's bytes: the connection's number, and which connections hold.
struct Hold {
    n: usize,
    held: watch::Receiver<Held>,
    /// The proxy's count of bytes held back.
    bytes: Arc<AtomicUsize>,
}

impl Hold {
    fn holds(&self) -> bool {
        let held = self.held.borrow();
        self.n < held.before || held.next.contains(&self.n)
    }
}

/// Copy bytes one way until either side closes; once `silent()`, swallow them, and do not
/// pass a close on either (a dead host sends nothing, not even a FIN). While `hold` holds, keep
/// the bytes, and send them (and then a close that came meanwhile) when it stops.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: impl Fn() -> bool,
    mut hold: Option<Hold>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut held = Vec::new();
    let mut open = true;
    loop {
        let holding = hold.as_ref().is_some_and(Hold::holds);
        if !holding && !held.is_empty() {
            let sent = to.write_all(&held).await;
            if let Some(hold) = &hold {
                hold.bytes.fetch_sub(held.len(), Ordering::SeqCst);
            }
            if sent.is_err() {
                break;
            }
            held.clear();
        }
        if !open {
            if !holding {
                break;
            }
            // Closed by the client: wait until what it sent may go.
            let Some(hold) = hold.as_mut() else { break };
            if hold.held.changed().await.is_err() {
                break;
            }
            continue;
        }
        let read = match hold.as_mut() {
            Some(hold) if holding => tokio::select! {
                read = from.read(&mut buf) => read,
                changed = hold.held.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break, // the proxy is gone
                },
            },
            _ => from.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                open = false;
                continue;
            }
            Ok(n) => n,
        };
        if silent() {
            continue;
        }
        if let Some(hold) = hold.as_ref().filter(|hold| hold.holds()) {
            held.extend_from_slice(&buf[..n]);
            hold.bytes.fetch_add(n, Ordering::SeqCst);
        } else if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if silent() {
        std::future::pending::<()>().await;
    }
}
