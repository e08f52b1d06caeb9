//! Release notices over Redis pub/sub, shared per key within the process.
//!
//! The release script publishes on `dlock:released:<key>`. Waiters of this process register
//! here; one subscription per key serves them all, made when the first waiter comes and
//! dropped when the last one leaves, on one dedicated pub/sub connection run by one task.
//! The task reconnects after a failure and then wakes every waiter, since a release may have
//! been missed meanwhile. Notices are only hints: waiters always re-check with an acquire.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::ReleaseWatch;

#[derive(Debug)]
pub(super) struct Notifier {
    shared: Arc<Shared>,
    kick: mpsc::UnboundedSender<()>,
}

#[derive(Debug)]
struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    /// Bumped on every release notice (and after a reconnect).
    notices: watch::Sender<u64>,
    /// True once Redis has confirmed the subscription.
    subscribed: watch::Sender<bool>,
    waiters: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Notifier {
    /// Start the subscriber task for the Redis behind `client`.
    pub(super) fn start(client: redis::Client, call_timeout: Duration) -> Self {
        let shared = Arc::new(Shared { channels: Mutex::default() });
        let (kick, kicks) = mpsc::unbounded_channel();
        tokio::spawn(subscriber(client, call_timeout, Arc::downgrade(&shared), kicks));
        Self { shared, kick }
    }

    /// Register a waiter on `channel`; resolves once the subscription is confirmed, or after
    /// `timeout` (the watch then still works, with the caller's timer as the fallback).
    pub(super) async fn watch(&self, channel: String, timeout: Duration) -> ReleaseWatch {
        let (rx, mut subscribed) = {
            let mut channels = self.shared.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notices: watch::channel(0).0,
                subscribed: watch::channel(false).0,
                waiters: 0,
            });
            entry.waiters += 1;
            (entry.notices.subscribe(), entry.subscribed.subscribe())
        };
        let _ = self.kick.send(());
        let unwatch = Unwatch { shared: Arc::clone(&self.shared), channel, kick: self.kick.clone() };
        let _ = tokio::time::timeout(timeout, subscribed.wait_for(|s| *s)).await;
        ReleaseWatch::new(rx, Some(Box::new(unwatch)))
    }

    /// How many channels the process is subscribed to or about to be (for tests).
    pub(super) fn channel_count(&self) -> usize {
        self.shared.lock().len()
    }
}

/// Unregisters one waiter when its [`ReleaseWatch`] is dropped.
struct Unwatch {
    shared: Arc<Shared>,
    channel: String,
    kick: mpsc::UnboundedSender<()>,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        let mut channels = self.shared.lock();
        if let Some(entry) = channels.get_mut(&self.channel) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                channels.remove(&self.channel);
                drop(channels);
                let _ = self.kick.send(());
            }
        }
    }
}

/// The one task that owns the pub/sub connection: subscribes to what waiters want, drops
/// what they no longer want, and forwards notices. Ends when the backend is dropped.
async fn subscriber(
    client: redis::Client,
    call_timeout: Duration,
    shared: Weak<Shared>,
    mut kicks: mpsc::UnboundedReceiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Nothing to do until some waiter wants a channel.
        if shared.upgrade().is_none_or(|s| s.lock().is_empty()) && kicks.recv().await.is_none() {
            return;
        }
        let pubsub = match tokio::time::timeout(call_timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            outcome => {
                let error = match outcome {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(target: "dlock", %error, "release notices unavailable; waiters fall back to timers");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let connected_at = Instant::now();
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: HashSet<String> = HashSet::new();
        loop {
            let Some(strong) = shared.upgrade() else { return };
            if reconcile(&strong, &mut sink, &mut subscribed, call_timeout).await.is_err() {
                break;
            }
            drop(strong);
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let Some(strong) = shared.upgrade() else { return };
                        if let Some(entry) = strong.lock().get(msg.get_channel_name()) {
                            entry.notices.send_modify(|n| *n = n.wrapping_add(1));
                        }
                    }
                    None => break,
                },
                kick = kicks.recv() => if kick.is_none() { return },
            }
        }
        // Disconnected: releases may have been missed, so wake every waiter to re-check.
        let Some(strong) = shared.upgrade() else { return };
        for entry in strong.lock().values() {
            entry.subscribed.send_replace(false);
            entry.notices.send_modify(|n| *n = n.wrapping_add(1));
        }
        drop(strong);
        // A connection that failed soon after it was made (say, SUBSCRIBE not permitted) must
        // not turn into a reconnect loop: back off unless it had been healthy for a while.
        if connected_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// Make the connection's subscriptions match the channels waiters want.
async fn reconcile(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<String>,
    call_timeout: Duration,
) -> Result<(), ()> {
    let (wanted, unwanted): (Vec<String>, Vec<String>) = {
        let channels = shared.lock();
        (
            channels.keys().filter(|c| !subscribed.contains(*c)).cloned().collect(),
            subscribed.iter().filter(|c| !channels.contains_key(*c)).cloned().collect(),
        )
    };
    if !unwanted.is_empty() {
        bounded(call_timeout, sink.unsubscribe(&unwanted)).await?;
        for channel in &unwanted {
            subscribed.remove(channel);
        }
    }
    // A channel whose last waiter left and a new one came before this ran is still
    // subscribed on the connection: tell the new waiter at once.
    {
        let channels = shared.lock();
        for (channel, entry) in channels.iter() {
            if subscribed.contains(channel) && !*entry.subscribed.borrow() {
                entry.subscribed.send_replace(true);
            }
        }
    }
    if !wanted.is_empty() {
        bounded(call_timeout, sink.subscribe(&wanted)).await?;
        let channels = shared.lock();
        for channel in wanted {
            if let Some(entry) = channels.get(&channel) {
                entry.subscribed.send_replace(true);
            }
            subscribed.insert(channel);
        }
    }
    Ok(())
}

async fn bounded(
    call_timeout: Duration,
    call: impl Future<Output = redis::RedisResult<()>>,
) -> Result<(), ()> {
    match tokio::time::timeout(call_timeout, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::debug!(target: "dlock", error = %err, "pub/sub command failed; reconnecting");
            Err(())
        }
        Err(_) => Err(()),
    }
}
