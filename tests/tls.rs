//! TLS (`rediss://`, cargo feature `tls`) against real `redis-server`s serving TLS with a
//! private certificate authority made for each test: locking, waiting and hand-offs over TLS
//! (commands and pub/sub), the authority option, client certificates, and the errors a user
//! sees when the certificates do not fit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dlock::backend::BackendErrorKind;
use dlock::{Error, LockService, RedisBackend, RedisClusterBackend, RedisSentinelBackend};
use dlock_tests::support::tls::{Certificates, TlsSentinel};
use dlock_tests::{
    RedisCluster, RedisServer, chain, cluster_inspector, free_port, inspector, poll_until, redis_cmd,
};
use tokio::task::block_in_place;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A private server serving TLS on a port of its own (its plain port is for inspection).
struct TlsServer {
    server: RedisServer,
    tls_port: u16,
}

impl TlsServer {
    fn start(certs: &Certificates, verify_clients: bool) -> Self {
        Self::start_with(certs, verify_clients, &[])
    }

    fn start_with(certs: &Certificates, verify_clients: bool, extra: &[String]) -> Self {
        let tls_port = free_port();
        let mut args = certs.server_args(tls_port, verify_clients);
        args.extend_from_slice(extra);
        let server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Self { server, tls_port }
    }

    /// A server that replicates over TLS (`tls-replication yes`, which also has it announce
    /// its TLS port to its primary and so to sentinels); a replica of `primary`'s TLS port if
    /// given.
    fn start_replicating(certs: &Certificates, primary: Option<u16>) -> Self {
        let mut extra = vec!["--tls-replication".to_owned(), "yes".to_owned()];
        if let Some(port) = primary {
            extra.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), port.to_string()]);
        }
        Self::start_with(certs, false, &extra)
    }

    fn rediss_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

async fn connect(
    url: &str,
    roots: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<RedisBackend, Error> {
    let mut builder = RedisBackend::builder(url).call_timeout(CALL_TIMEOUT);
    if let Some(roots) = roots {
        builder = builder.tls_root_certificates(roots);
    }
    if let Some((certificate, key)) = client {
        builder = builder.tls_client_certificate(certificate, key);
    }
    builder.connect().await
}

/// The connection error of a backend that could not connect: its kind and its message chain.
fn connect_failure(result: Result<impl std::fmt::Debug, Error>, what: &str) -> (BackendErrorKind, String) {
    match result {
        Err(err @ Error::Backend { .. }) => {
            let Error::Backend { source, .. } = &err else { unreachable!() };
            (source.kind(), chain(&err))
        }
        Err(err) => panic!("{what}: expected Error::Backend, got {err:?} ({err})"),
        Ok(backend) => panic!("{what}: connected: {backend:?}"),
    }
}

/// `holder` takes `key`; a task waits for it through `waiter` until `inspect` (a plain
/// connection to the key's server or cluster) shows the waiter in the key's line; `holder`
/// releases. The waiter must get the key by the hand-off notice — within 500 ms, where its
/// recheck is 1 s away — with a greater fencing token.
async fn hand_over_by_notice<C>(holder: &LockService, waiter: LockService, key: &str, inspect: C)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let guard = holder.lock(key).ttl(Duration::from_secs(10)).await.expect("lock over TLS");
    let waiting = key.to_owned();
    let waiter = tokio::spawn(async move {
        let guard =
            waiter.lock(waiting.as_str()).ttl(Duration::from_secs(10)).wait(Duration::from_secs(10)).await?;
        let got = Instant::now();
        let token = guard.fencing_token();
        guard.release().await?;
        Ok::<_, Error>((got, token))
    });
    // The waiter is in the key's line once its process is subscribed and has asked.
    let line = RedisBackend::line_key(key);
    dlock_tests::poll_until(Duration::from_secs(5), "the waiter in line", || {
        let (mut conn, line) = (inspect.clone(), line.clone());
        async move { redis::cmd("EXISTS").arg(&line).query_async::<i64>(&mut conn).await.expect("EXISTS") == 1 }
    })
    .await;
    let first_token = guard.fencing_token();
    let released = Instant::now();
    assert!(guard.release().await.expect("release over TLS"));
    let (got, token) = waiter.await.expect("the waiter task").expect("the waiter gets the lock");
    assert!(token > first_token, "fencing tokens increase: {first_token} then {token}");
    let handed_in = got.duration_since(released);
    assert!(
        handed_in < Duration::from_millis(500),
        "handed over in {handed_in:?}: by the notice, not the recheck"
    );
}

/// With the private authority trusted, a `rediss://` backend locks (the key is on the
/// server), and a second backend waiting on the key is handed it when the first releases:
/// the hand-off notice came over TLS pub/sub, well before the waiter's 1 s recheck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_authority_trusted_locks_waits_and_hands_over_over_tls() {
    let certs = Certificates::generate();
    let tls = TlsServer::start(&certs, false);
    let ca = certs.pem("ca.pem");
    let first =
        LockService::new(connect(&tls.rediss_url(), Some(ca.clone()), None).await.expect("connect over TLS"));
    let second =
        LockService::new(connect(&tls.rediss_url(), Some(ca), None).await.expect("connect over TLS"));

    let guard = first.lock("acct").ttl(Duration::from_secs(10)).await.expect("lock over TLS");
    let mut plain = inspector(&tls.server.url()).await;
    let value: Option<String> = redis_cmd(&mut plain, &["GET", "acct"]).await;
    let value = value.expect("the lock is on the server");
    assert!(value.starts_with(&format!("{}:", guard.fencing_token())), "{value}");
    assert!(guard.release().await.expect("release over TLS"));
    hand_over_by_notice(&first, second, "acct", plain).await;
}

/// A server whose certificate another authority signed is refused — by the public roots when
/// no authority is given, and by a private authority that did not sign it — promptly, as a
/// connection error whose message says why.
#[tokio::test]
async fn a_certificate_from_an_authority_not_trusted_is_refused_with_a_clear_error() {
    let certs = Certificates::generate();
    let other = Certificates::generate();
    let tls = TlsServer::start(&certs, false);
    for (roots, case) in
        [(None, "the public roots"), (Some(other.pem("ca.pem")), "another private authority")]
    {
        let started = Instant::now();
        let (kind, message) = connect_failure(connect(&tls.rediss_url(), roots, None).await, case);
        assert_eq!(kind, BackendErrorKind::Connection, "{case}: {message}");
        assert!(
            message.contains("TLS certificate was not accepted") && message.contains("tls_root_certificates"),
            "{case}: the message says why, and what to do: {message}"
        );
        assert!(started.elapsed() < CALL_TIMEOUT, "{case}: refused after {:?}", started.elapsed());
    }
}

/// A server that verifies clients (`tls-auth-clients yes`) refuses a client without a
/// certificate or with one another authority signed, saying which and what to pass, and
/// serves one that presents the certificate its authority signed.
#[tokio::test]
async fn a_client_certificate_is_presented_to_a_server_that_verifies_clients() {
    let certs = Certificates::generate();
    let tls = TlsServer::start(&certs, true);
    let ca = certs.pem("ca.pem");
    let (kind, message) =
        connect_failure(connect(&tls.rediss_url(), Some(ca.clone()), None).await, "no client certificate");
    assert_eq!(kind, BackendErrorKind::Connection, "{message}");
    assert!(
        message.contains("requires a TLS client certificate") && message.contains("tls_client_certificate"),
        "{message}"
    );

    // A certificate another authority signed is refused too.
    let other = Certificates::generate();
    let stranger = Some((other.pem("client.pem"), other.pem("client.key")));
    let (kind, message) = connect_failure(
        connect(&tls.rediss_url(), Some(ca.clone()), stranger).await,
        "a client certificate another authority signed",
    );
    assert_eq!(kind, BackendErrorKind::Connection, "{message}");
    assert!(
        message.contains("did not accept the TLS client certificate")
            && message.contains("tls_client_certificate"),
        "{message}"
    );

    let client = Some((certs.pem("client.pem"), certs.pem("client.key")));
    let backend =
        connect(&tls.rediss_url(), Some(ca), client).await.expect("connect with a client certificate");
    let guard = LockService::new(backend).lock("k").await.expect("lock");
    assert!(guard.release().await.expect("release"));
}

/// Options that cannot work are `InvalidInput` before anything connects, saying how to fix
/// them: certificates for a plain `redis://` URL; a path where the PEM's contents belong.
#[tokio::test]
async fn tls_options_that_cannot_work_are_invalid_input() {
    let certs = Certificates::generate();
    let ca = certs.pem("ca.pem");
    let port = free_port();
    let cases: [(Result<RedisBackend, Error>, &str, &str); 3] = [
        (
            connect(&format!("redis://127.0.0.1:{port}"), Some(ca.clone()), None).await,
            "Redis URL",
            "rediss://",
        ),
        (
            connect(&format!("rediss://127.0.0.1:{port}"), Some(b"/etc/redis/ca.pem".to_vec()), None).await,
            "TLS certificates",
            "not its path",
        ),
        (
            connect(
                &format!("rediss://127.0.0.1:{port}"),
                Some(ca),
                Some((certs.pem("client.pem"), b"client.key".to_vec())),
            )
            .await,
            "TLS certificates",
            "private key",
        ),
    ];
    for (result, expected_what, hint) in cases {
        match result {
            Err(Error::InvalidInput { what, reason }) => {
                assert_eq!(what, expected_what, "{reason}");
                assert!(reason.contains(hint), "the reason says how to fix it: {reason}");
            }
            other => panic!("expected InvalidInput about {expected_what}, got {other:?}"),
        }
    }
}

/// A Redis Cluster whose nodes serve TLS (the bus too) and verify clients: with the private
/// authority trusted and the client certificate presented, the cluster backend finds every
/// shard over TLS (the nodes it is told of are their TLS ports), takes a lock on each of the
/// three primaries, and hands a key over to a second backend by its sharded pub/sub notice,
/// well before the 1 s recheck. Without the client certificate it is refused. A
/// `rediss-cluster://` URL (`dlock::connect`, which trusts only the public authorities)
/// reaches the same nodes over TLS and is refused for the certificate, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_locks_on_every_shard_and_hands_over() {
    let certs = Certificates::generate();
    let cluster = block_in_place(|| RedisCluster::start_tls(&certs));
    let builder = || {
        RedisClusterBackend::builder(cluster.tls_seed_urls())
            .call_timeout(CALL_TIMEOUT)
            .tls_root_certificates(certs.pem("ca.pem"))
    };
    let (kind, message) = connect_failure(builder().connect().await, "no client certificate");
    assert_eq!(kind, BackendErrorKind::Connection, "{message}");
    assert!(message.contains("requires a TLS client certificate"), "{message}");
    assert!(message.contains("tls_client_certificate"), "{message}");
    let connect =
        || builder().tls_client_certificate(certs.pem("client.pem"), certs.pem("client.key")).connect();
    let first = LockService::new(connect().await.expect("connect to the cluster over mutual TLS"));
    let second = LockService::new(connect().await.expect("connect to the cluster over mutual TLS"));

    // One key on each primary.
    let mut keys: Vec<String> = Vec::new();
    for i in 0.. {
        let key = format!("acct{i}");
        let primary = cluster.primary_for_key(&key);
        if keys.iter().all(|k| cluster.primary_for_key(k) != primary) {
            keys.push(key);
        }
        if keys.len() == 3 {
            break;
        }
    }
    let mut plain = cluster_inspector(&cluster.seed_urls()).await;
    for key in &keys {
        let guard = first.lock(key.as_str()).ttl(Duration::from_secs(10)).await.expect("lock over TLS");
        let value: Option<String> = redis::cmd("GET").arg(key).query_async(&mut plain).await.expect("GET");
        assert!(
            value.is_some_and(|v| v.starts_with(&format!("{}:", guard.fencing_token()))),
            "{key} on its shard"
        );
        assert!(guard.release().await.expect("release over TLS"));
    }

    hand_over_by_notice(&first, second, &keys[0], plain).await;

    let url = format!("rediss-cluster://{}", cluster.tls_seed_urls()[0].trim_start_matches("rediss://"));
    let (kind, message) = connect_failure(dlock::connect(&url).await, &url);
    assert_eq!(kind, BackendErrorKind::Connection, "{url}: {message}");
    assert!(message.contains("TLS certificate was not accepted"), "{url}: {message}");
}

/// A sentinel and a primary that both serve TLS: with the private authority trusted, the
/// sentinel backend asks the sentinel over TLS, reaches the primary it names (at its TLS port)
/// over TLS too, and locks and hands over between two backends by notice. Without the
/// authority, the sentinel's certificate is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_over_tls_names_a_primary_reached_over_tls() {
    let certs = Certificates::generate();
    let primary = TlsServer::start(&certs, false);
    let sentinel = block_in_place(|| TlsSentinel::start(&certs, "tls-group", primary.tls_port));
    let connect = || {
        RedisSentinelBackend::builder([sentinel.rediss_url()], "tls-group")
            .call_timeout(CALL_TIMEOUT)
            .tls_root_certificates(certs.pem("ca.pem"))
            .connect()
    };
    let backend = connect().await.expect("connect through the sentinel over TLS");
    assert_eq!(
        backend.primary_address(),
        format!("127.0.0.1:{}", primary.tls_port),
        "the primary's TLS port"
    );
    let first = LockService::new(backend);
    let second = LockService::new(connect().await.expect("connect through the sentinel over TLS"));

    let guard = first.lock("acct").ttl(Duration::from_secs(10)).await.expect("lock over TLS");
    let mut plain = inspector(&primary.server.url()).await;
    let value: Option<String> = redis_cmd(&mut plain, &["GET", "acct"]).await;
    assert!(
        value.is_some_and(|v| v.starts_with(&format!("{}:", guard.fencing_token()))),
        "the lock on the primary"
    );
    assert!(guard.release().await.expect("release over TLS"));
    hand_over_by_notice(&first, second, "acct", plain).await;

    let refused = RedisSentinelBackend::builder([sentinel.rediss_url()], "tls-group")
        .call_timeout(CALL_TIMEOUT)
        .connect()
        .await;
    let (kind, message) = connect_failure(refused, "a sentinel whose authority is not trusted");
    assert_eq!(kind, BackendErrorKind::Connection, "{message}");
    assert!(
        message.contains("TLS certificates were not accepted") && message.contains("tls_root_certificates"),
        "the message says why, and what to do: {message}"
    );
}

/// A Sentinel failover over TLS: a primary and its replica both serve TLS and replicate over
/// it, and the sentinel is asked over TLS. After `SENTINEL FAILOVER`, the backend follows the
/// sentinel to the replica's TLS port; a lock a replica acknowledged before the failover is
/// still held past its ttl (its renewals reach the new primary, over TLS), and the next holder
/// takes the key there with a greater token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_the_backend_to_the_replicas_tls_port() {
    let certs = Certificates::generate();
    let primary = TlsServer::start_replicating(&certs, None);
    let replica = TlsServer::start_replicating(&certs, Some(primary.tls_port));
    let on_replica = inspector(&replica.server.url()).await;
    poll_until(Duration::from_secs(10), "the replica in sync over TLS", || {
        let mut conn = on_replica.clone();
        async move {
            let info: String = redis_cmd(&mut conn, &["INFO", "replication"]).await;
            info.contains("master_link_status:up")
        }
    })
    .await;
    let name = "tls-failover";
    let sentinel = block_in_place(|| TlsSentinel::start(&certs, name, primary.tls_port));
    let mut ask = inspector(&sentinel.url()).await;
    // Known at its TLS port, connected, and in sync: a replica the sentinel may promote.
    poll_until(Duration::from_secs(20), "the sentinel ready to promote the replica", || {
        let mut conn = ask.clone();
        let port = replica.tls_port.to_string();
        async move {
            let replicas: Vec<HashMap<String, String>> =
                redis_cmd(&mut conn, &["SENTINEL", "REPLICAS", name]).await;
            replicas.iter().any(|r| {
                let field = |name: &str| r.get(name).map(String::as_str);
                field("port") == Some(port.as_str())
                    && field("flags") == Some("slave")
                    && field("master-link-status") == Some("ok")
            })
        }
    })
    .await;
    let connect = |replicated: bool| {
        let mut builder = RedisSentinelBackend::builder([sentinel.rediss_url()], name)
            .call_timeout(CALL_TIMEOUT)
            .tls_root_certificates(certs.pem("ca.pem"));
        if replicated {
            builder = builder.replicas_acknowledge(1, Duration::from_millis(500));
        }
        builder.connect()
    };
    let backend = connect(true).await.expect("connect through the sentinel over TLS");
    assert_eq!(backend.primary_address(), format!("127.0.0.1:{}", primary.tls_port));
    let holder = LockService::new(backend.clone());
    let held = holder.lock("acct").ttl(Duration::from_secs(3)).await.expect("a replicated lock over TLS");
    let token = held.fencing_token();

    let answer: String = redis_cmd(&mut ask, &["SENTINEL", "FAILOVER", name]).await;
    assert_eq!(answer, "OK");
    let moved = poll_until(Duration::from_secs(15), "the backend on the replica's TLS port", || {
        let backend = backend.clone();
        let port = replica.tls_port;
        async move { backend.primary_address() == format!("127.0.0.1:{port}") }
    })
    .await;
    eprintln!("the backend followed the failover {moved:?} after SENTINEL FAILOVER");
    assert!(backend.failovers_followed() >= 1);
    // Past the ttl: only renewals on the new primary, over TLS, keep the lock.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!held.is_lost(), "the replicated lock was renewed on the new primary");
    // (A new connection: the promotion closed the ones the replica had.)
    let mut on_new_primary = inspector(&replica.server.url()).await;
    let value: Option<String> = redis_cmd(&mut on_new_primary, &["GET", "acct"]).await;
    assert!(value.is_some_and(|v| v.starts_with(&format!("{token}:"))), "the lock on the new primary");
    assert!(held.release().await.expect("release on the new primary, over TLS"));

    let next = LockService::new(connect(false).await.expect("a second backend, after the failover"));
    let taken = next.lock("acct").await.expect("the key on the new primary, over TLS");
    assert!(taken.fencing_token() > token, "tokens increase across the failover");
    assert!(taken.release().await.expect("release"));
}
