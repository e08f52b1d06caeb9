//! An axum service whose handler is annotated: requests for one user are serialised across
//! every instance of the service, requests for different users run in parallel.
//!
//! ```text
//! cargo run --example axum_handler
//! ```
//!
//! It starts the service on a free local port (Redis at `$REDIS_URL` if reachable, else the
//! in-process backend), fires 3 concurrent requests for user 1 and 3 for user 2 from a small
//! HTTP client, and prints when each handler ran.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dlock::distributed_lock;
use dlock_examples::with_causes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct App {
    started: Instant,
    /// (user, entered ms, left ms) of every handler run.
    runs: Arc<Mutex<Vec<(u64, u128, u128)>>>,
}

/// What the handler returns on failure; a lock timeout becomes "409 try again".
#[derive(Debug)]
struct AppError(dlock::Error);

impl From<dlock::Error> for AppError {
    fn from(err: dlock::Error) -> Self {
        Self(err)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            dlock::Error::Timeout { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.0.to_string()).into_response()
    }
}

/// `POST /users/{user_id}/pay`: one payment at a time per user, on every instance.
#[distributed_lock(key = "user:<user_id>", ttl = "5s", wait = "5s")]
async fn pay(Path(user_id): Path<u64>, State(app): State<App>) -> Result<String, AppError> {
    let entered = app.started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_millis(100)).await; // the payment's own work
    let left = app.started.elapsed().as_millis();
    app.runs.lock().unwrap_or_else(PoisonError::into_inner).push((user_id, entered, left));
    let token = dlock::fencing_token().unwrap_or_default();
    Ok(format!("user {user_id} paid; lock granted at {entered:>3} ms, fencing token {token}\n"))
}

/// The "granted at <ms>" of a response, to order the responses by.
fn granted_at(response: &str) -> u128 {
    response
        .split("granted at")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(u128::MAX)
}

/// A minimal HTTP/1.1 client: enough to fire concurrent requests at the example.
async fn post_request(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
    Ok(format!("{status} — {body}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let connected =
        dlock::RedisBackend::builder(&url).call_timeout(Duration::from_millis(500)).connect().await;
    let service = match connected {
        Ok(redis) => {
            println!("lock backend: Redis at {url}");
            dlock::LockService::builder(redis)
                .key_prefix(format!("axum-demo:{}:", std::process::id()))
                .build()
        }
        Err(err) => {
            println!("lock backend: in-process ({})", with_causes(&err));
            dlock::LockService::new(dlock::MemoryBackend::new())
        }
    };
    dlock::set_global(service)?;

    let app = App { started: Instant::now(), runs: Arc::default() };
    let router = Router::new().route("/users/{user_id}/pay", post(pay)).with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    println!("serving on http://{addr}; 3 concurrent payments each for users 1 and 2:\n");

    let mut requests = Vec::new();
    for user in [1, 2, 1, 2, 1, 2] {
        requests.push(tokio::spawn(async move {
            (user, post_request(addr, &format!("/users/{user}/pay")).await)
        }));
    }
    let mut responses = Vec::new();
    for request in requests {
        let (user, response) = request.await?;
        responses.push((user, response.unwrap_or_else(|err| format!("request failed: {err}"))));
    }
    // The requests went out at once; print the answers in the order their handlers got the
    // lock (the time is in each answer), so one user's fencing tokens read in order.
    responses.sort_by_key(|(_, response)| granted_at(response));
    println!("responses, in the order the handlers got the lock:");
    for (user, response) in &responses {
        println!("  user {user}: {response}");
    }
    server.abort();

    let mut runs = app.runs.lock().unwrap_or_else(PoisonError::into_inner).clone();
    runs.sort_by_key(|r| r.1);
    println!("\nwhen each handler ran (ms since start):");
    for (user, entered, left) in &runs {
        println!("  user {user}: {entered:>4} .. {left:>4}");
    }
    let overlapping_same_user = runs
        .iter()
        .enumerate()
        .any(|(i, a)| runs[i + 1..].iter().any(|b| a.0 == b.0 && a.1 < b.2 && b.1 < a.2));
    let parallel_users = runs.iter().any(|a| runs.iter().any(|b| a.0 != b.0 && a.1 < b.2 && b.1 < a.2));
    println!(
        "\nsame user overlapped: {overlapping_same_user}; different users ran in parallel: {parallel_users}"
    );
    if overlapping_same_user || runs.len() != 6 {
        return Err("requests of one user overlapped, or some failed".into());
    }
    Ok(())
}
