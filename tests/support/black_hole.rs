//! [`BlackHoleProxy`]: a TCP proxy whose connections can be made to go silent, as a dead host
//! or a NAT that forgot the flow would, while new connections work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy (to Redis, PostgreSQL, any TCP server) that can make every connection open so far go silent (bytes are
/// swallowed, nothing is closed: a dead host, a NAT that forgot the flow) while new
/// connections work.
pub struct BlackHoleProxy {
    port: u16,
    /// Connections accepted before this generation are silent.
    silenced_before: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHoleProxy {
    /// Listen on a free loopback port, forwarding each connection to `upstream` on loopback.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let silenced_before = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (silenced_before, accepted) = (Arc::clone(&silenced_before), Arc::clone(&accepted));
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
                    tokio::spawn(pump(client_read, server_write, silent.clone()));
                    tokio::spawn(pump(server_read, client_write, silent));
                }
            }
        });
        Self { port, silenced_before, accepted, task }
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

/// Copy bytes one way until either side closes; once `silent()`, swallow them, and do not
/// pass a close on either (a dead host sends nothing, not even a FIN).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !silent() && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if silent() {
        std::future::pending::<()>().await;
    }
}
