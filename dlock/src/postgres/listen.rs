//! Release notices over LISTEN/NOTIFY: one listening connection per backend, outside the pool,
//! run by one task on the backend's runtime, and shared by every waiter of the process.
//!
//! Each key has its own channel (see `Statements::channel`); the task LISTENs to the channels
//! of the keys waiters want, made when the first waiter of a key comes and dropped when the
//! last one leaves, and forwards each notification to that key's waiters. A waiter asks for
//! notices in the lease table (so that a release NOTIFYs at all) only while its channel is
//! confirmed, so a release it asked to hear about is heard. After the connection drops — or
//! goes silent, which a check every [`HEALTH_CHECK`] finds — the task reconnects, LISTENs
//! again, and wakes every waiter: a notice may have been missed meanwhile. Notices are only
//! hints: waiters always re-check with an acquire.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::runtime::Background;
use super::sql::quote_ident;
use crate::backend::{BoxFuture, ReleaseNotice, ReleaseWatch};

/// How often the listening connection is checked with an empty query: one that does not
/// answer within the call timeout (a silent connection: a dead host, a NAT that forgot the
/// flow) is replaced like one that broke, and its waiters woken.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Listener {
    shared: Arc<Shared>,
    kick: mpsc::UnboundedSender<()>,
}

#[derive(Debug, Default)]
struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    /// Sent every release notice (and a `Released` after a reconnect).
    notices: watch::Sender<ReleaseNotice>,
    /// True while the server has confirmed the LISTEN.
    listening: watch::Sender<bool>,
    waiters: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // Every update is one insert, remove or counter change: a poisoned map is consistent.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Listener {
    /// Start the listening task on `background`; it connects with `config` once a waiter
    /// wants a channel.
    pub(super) fn start(
        config: tokio_postgres::Config,
        background: &Background,
        call_timeout: Duration,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let (kick, kicks) = mpsc::unbounded_channel();
        background.spawn(listen(config, call_timeout, Arc::downgrade(&shared), kicks));
        Self { shared, kick }
    }

    /// Register a waiter on `channel`; resolves once the LISTEN is confirmed, or after
    /// `timeout` (the watch then still works, with the caller's timer as the fallback).
    pub(super) async fn watch(&self, channel: String, timeout: Duration) -> ReleaseWatch {
        let (mut rx, mut listening) = {
            let mut channels = self.shared.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notices: watch::channel(ReleaseNotice::Released).0,
                listening: watch::channel(false).0,
                waiters: 0,
            });
            entry.waiters += 1;
            (entry.notices.subscribe(), entry.listening.subscribe())
        };
        let _ = self.kick.send(());
        let unwatch = Unwatch { shared: Arc::clone(&self.shared), channel, kick: self.kick.clone() };
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, listening.wait_for(|l| *l)).await {
            // The confirmation's wake-up (see `confirm`) is not for this waiter: it asks again
            // right after this returns anyway.
            rx.borrow_and_update();
        }
        ReleaseWatch::new(rx, Some(Box::new(unwatch))).with_hearing(listening)
    }

    /// Whether the server has confirmed the LISTEN on `channel`, so that a waiter here would
    /// hear a release now. `channel` is only built when some key is waited for.
    pub(super) fn is_listening(&self, channel: impl FnOnce() -> String) -> bool {
        let channels = self.shared.lock();
        !channels.is_empty() && channels.get(&channel()).is_some_and(|c| *c.listening.borrow())
    }

    /// How many channels the process listens to or is about to (for tests).
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

/// The one task that owns the listening connection: LISTENs to what waiters want, UNLISTENs
/// what they no longer want, and forwards notifications. Ends when the backend is dropped.
async fn listen(
    config: tokio_postgres::Config,
    call_timeout: Duration,
    shared: Weak<Shared>,
    mut kicks: mpsc::UnboundedReceiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Nothing to do until some waiter wants a channel.
        while shared.upgrade().is_none_or(|s| s.lock().is_empty()) {
            if kicks.recv().await.is_none() {
                return;
            }
        }
        let (client, connection) = match tokio::time::timeout(call_timeout, config.connect(NoTls)).await {
            Ok(Ok(connected)) => connected,
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
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(connection, notes_tx));
        let mut listening: HashSet<String> = HashSet::new();
        let mut health = tokio::time::interval_at(Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The health check under way, beside the forwarding of notifications.
        let mut checking: Option<BoxFuture<'_, bool>> = None;
        loop {
            let Some(strong) = shared.upgrade() else { return };
            if reconcile(&strong, &client, &mut listening, call_timeout).await.is_err() {
                break;
            }
            drop(strong);
            tokio::select! {
                note = notes.recv() => match note {
                    Some(channel) => {
                        let Some(strong) = shared.upgrade() else { return };
                        if let Some(entry) = strong.lock().get(&channel) {
                            entry.notices.send_replace(ReleaseNotice::Released);
                        }
                    }
                    // The connection ended.
                    None => break,
                },
                kick = kicks.recv() => if kick.is_none() { return },
                _ = health.tick(), if checking.is_none() => {
                    let client = &client;
                    checking = Some(Box::pin(async move {
                        matches!(tokio::time::timeout(call_timeout, client.simple_query("")).await, Ok(Ok(_)))
                    }));
                }
                Some(answered) = OptionFuture::from(checking.as_mut()), if checking.is_some() => {
                    checking = None;
                    if !answered {
                        tracing::debug!(target: "dlock", "the listening connection did not answer; reconnecting");
                        break;
                    }
                }
            }
        }
        drop(checking);
        driver.abort();
        drop(client);
        // Disconnected: releases may have been missed, so wake every waiter to re-check.
        let Some(strong) = shared.upgrade() else { return };
        for entry in strong.lock().values() {
            entry.listening.send_replace(false);
            entry.notices.send_replace(ReleaseNotice::Released);
        }
        drop(strong);
        // A connection that failed soon after it was made (say, LISTEN not permitted) must not
        // turn into a reconnect loop: back off unless it had been healthy for a while.
        if connected_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// Poll the connection, forwarding the channel of each notification; ends with the connection.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, notes: mpsc::UnboundedSender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(note)) => {
                if notes.send(note.channel().to_owned()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(target: "dlock", error = %err, "the PostgreSQL listening connection ended; reconnecting");
                return;
            }
        }
    }
}

/// Make the connection's LISTENs match the channels waiters want, in one round trip.
async fn reconcile(
    shared: &Shared,
    client: &Client,
    listening: &mut HashSet<String>,
    call_timeout: Duration,
) -> Result<(), ()> {
    let (wanted, unwanted): (Vec<String>, Vec<String>) = {
        let channels = shared.lock();
        let wanted = channels.keys().filter(|c| !listening.contains(*c)).cloned().collect();
        let unwanted = listening.iter().filter(|c| !channels.contains_key(*c)).cloned().collect();
        // A channel whose last waiter left and a new one came before this ran is still
        // listened to: tell the new waiter at once.
        for (channel, entry) in channels.iter() {
            if listening.contains(channel) && !*entry.listening.borrow() {
                confirm(entry);
            }
        }
        (wanted, unwanted)
    };
    if wanted.is_empty() && unwanted.is_empty() {
        return Ok(());
    }
    let mut batch = String::new();
    for channel in &unwanted {
        let _ = write!(batch, "UNLISTEN {};", quote_ident(channel));
    }
    for channel in &wanted {
        let _ = write!(batch, "LISTEN {};", quote_ident(channel));
    }
    match tokio::time::timeout(call_timeout, client.batch_execute(&batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::debug!(target: "dlock", error = %err, "LISTEN failed; reconnecting");
            return Err(());
        }
        Err(_) => return Err(()),
    }
    for channel in unwanted {
        listening.remove(&channel);
    }
    let channels = shared.lock();
    for channel in wanted {
        if let Some(entry) = channels.get(&channel) {
            confirm(entry);
        }
        listening.insert(channel);
    }
    Ok(())
}

/// Mark a channel's LISTEN confirmed, and wake its waiters: any that asked while it was not
/// (after a reconnect, or past their wait for the confirmation) did not ask for a notice in
/// the lease table, and asking again now does.
fn confirm(entry: &Channel) {
    // The notice first: a waiter in `watch` wakes on `listening` and then marks the notices
    // seen, so this wake-up (meant for waiters that asked before) does not reach it later as a
    // release.
    entry.notices.send_replace(ReleaseNotice::Released);
    entry.listening.send_replace(true);
}
