//! The private PostgreSQL `--backend postgres` runs and faults: a pause freezes every process
//! of it (not only the postmaster), a restart is a crash that keeps what was committed (and the
//! token sequence goes on), and neither a restart nor dropping it leaves a process (not even a
//! zombie) or the data directory behind.
//!
//! Needs PostgreSQL's server programs under /usr/lib/postgresql/*/bin (`.ci/run` installs them).

use std::time::Duration;

use dlock_check::postgres_server::PostgresServer;
use dlock_check::servers::ManagedServer;

const BOUND: Duration = Duration::from_secs(5);

/// The state letter of process `pid` (`S`, `R`, `T` stopped, `Z` a zombie), `None` when there
/// is no such process.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Whether `pid` is gone: exited and reaped (no zombie left behind).
fn gone(pid: u32) -> bool {
    state(pid).is_none()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let connecting = tokio::time::timeout(BOUND, tokio_postgres::connect(url, tokio_postgres::NoTls)).await;
    let (client, connection) = match connecting {
        Ok(Ok(made)) => made,
        Ok(Err(err)) => panic!("connecting to {url}: {err}"),
        Err(_) => panic!("connecting to {url} took over {BOUND:?}"),
    };
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_postgres_pauses_whole_restarts_with_its_data_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("dlock-check-pg-test-{}", std::process::id()));
    let mut server = PostgresServer::start(&dir, "pg").expect("a private PostgreSQL");
    let url = server.url();
    let home = server.data_home().to_owned();
    assert!(home.join("data/PG_VERSION").exists(), "its data directory is {}", home.display());

    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42); CREATE SEQUENCE tokens;")
        .await
        .expect("setup");
    let before: i64 = client.query_one("SELECT nextval('tokens')", &[]).await.expect("nextval").get(0);

    // Frozen whole: the postmaster, its helpers and this connection's backend.
    server.pause().expect("pause");
    let processes = server.processes();
    assert!(processes.len() >= 3, "the postmaster and its processes: {processes:?}");
    let states: Vec<_> = processes.iter().map(|&pid| (pid, state(pid))).collect();
    assert!(states.iter().all(|(_, s)| *s == Some('T')), "every process stopped: {states:?}");
    let frozen = tokio::time::timeout(Duration::from_millis(300), client.query_one("SELECT 1", &[])).await;
    assert!(frozen.is_err(), "a paused server answered");
    server.resume().expect("resume");
    let thawed = tokio::time::timeout(BOUND, client.query_one("SELECT 1", &[])).await;
    assert!(matches!(thawed, Ok(Ok(_))), "the thawed server answers the waiting query");

    // A crash and a start on the same data: the row is there, the sequence goes on.
    let processes = server.processes();
    server.start_again().expect("restart");
    assert!(server.keeps_data());
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the old connection died with the server");
    let left: Vec<_> = processes.iter().filter(|&&pid| !gone(pid)).collect();
    assert!(left.is_empty(), "the crashed server's processes are gone, and reaped: {left:?} remain");
    let client = connect(&url).await;
    let kept: i32 = client.query_one("SELECT n FROM kept", &[]).await.expect("the table").get(0);
    assert_eq!(kept, 42);
    let after: i64 = client.query_one("SELECT nextval('tokens')", &[]).await.expect("nextval").get(0);
    assert!(after > before, "the sequence went on: {before} then {after}");

    let processes = server.processes();
    drop(client);
    drop(server);
    let left: Vec<_> = processes.iter().filter(|&&pid| !gone(pid)).collect();
    assert!(left.is_empty(), "processes outlived the server: {left:?}");
    assert!(!home.exists(), "{} was left behind", home.display());
    assert!(dir.join("pg/postgres.log").exists(), "the log stays with the run");
    let _ = std::fs::remove_dir_all(&dir);
}
