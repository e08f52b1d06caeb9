//! Release notices over Redis pub/sub, shared per key within the process.
//!
//! Waiters of this process register here; one subscription per key (the process's channel for
//! the key, see [`layout`](super::layout)) serves them all, made when the first waiter comes
//! and dropped when the last one leaves, on one dedicated pub/sub connection (a [`Feed`] from
//! the backend's [`FeedSource`]: `SUBSCRIBE` on one server, `SSUBSCRIBE` on a cluster's
//! shards) run by one task: on the runtime that connected the backend if it is a multi-thread
//! one (a notice then wakes its waiters without a hop to another thread), else on dlock's own
//! runtime, and moved there if the runtime that connected the backend ends first (see
//! [`background::spawn_lasting`]). A waiter
//! joins a key's waiting line in Redis only once its subscription is confirmed, so that it
//! hears its hand-off.
//!
//! On it come hand-offs to this process (`g:<token>:<owner>`: the key now belongs to `owner`
//! under fencing token `token`; each waiter takes one only if it names its own owner token)
//! and plain release notices (`r`, sent only when a release found the line holding nothing
//! but places whose time was up). Only a client allowed to publish on the channel — under
//! the service's key prefix — can send either; see the README's ACL recipe.
//!
//! The connection is checked with a `PING` every [`HEALTH_CHECK`]; one that does not answer
//! within the call timeout (a silent connection) is replaced like one that broke. After any
//! reconnect every waiter is woken, since a hand-off or release may have been missed
//! meanwhile. Notices are only hints: waiters always re-check with an acquire.
//!
//! The task never waits on a command: subscribes, unsubscribes and pings run beside the
//! forwarding of notices, so a slow server delays no notice that has already arrived. On a
//! cluster, one node down or silent is that shard's trouble alone: a channel whose node does
//! not confirm is tried again a [`HEALTH_CHECK`] later while the other shards' subscriptions
//! stand, and the feed is replaced only when no primary answers its `PING`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::str;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::stream::{BoxStream, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};
use redis::RedisResult;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{BoxFuture, ReleaseNotice, ReleaseWatch};
use crate::background;

/// Where the notifier's pub/sub connection goes: one server, the primary the sentinels name,
/// or a cluster's shards.
pub(super) trait FeedSource: Send + Sync + 'static {
    /// A new pub/sub connection with no subscriptions.
    fn open(&self) -> BoxFuture<'_, RedisResult<Feed>>;
}

/// One pub/sub connection: what subscribes, what it hears, and when to give it up.
pub(super) struct Feed {
    pub(super) sink: Box<dyn FeedSink>,
    pub(super) events: BoxStream<'static, FeedEvent>,
    /// Resolves when this connection no longer reaches the right server (the sentinels named
    /// a new primary); pending for ever where that cannot happen.
    pub(super) moved: BoxFuture<'static, ()>,
}

/// The commands side of a [`Feed`]. Each call gives a future of its own, holding no borrow
/// of the sink, so the subscriber goes on forwarding notices while a call waits for a slow
/// server; each call is bounded by `timeout`.
pub(super) trait FeedSink: Send {
    /// Subscribe to `channels`; done once the server confirmed each.
    fn subscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome>;
    /// Unsubscribe from `channels`.
    fn unsubscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome>;
    /// Check that the feed still answers ([`Outcome::Broken`] when it does not).
    fn ping(&self, timeout: Duration) -> BoxFuture<'static, Outcome>;
}

/// How a [`FeedSink`] call went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Done, for every channel.
    Done,
    /// Not done for `failed` — their cluster node is down or silent — and done for the rest.
    /// The feed stands: those channels are tried again later, the others are unaffected.
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code, reason = "only cluster feeds fail in part"))]
    Partly { failed: Vec<String> },
    /// The connection failed or went silent: the feed must be replaced.
    Broken(String),
}

impl Outcome {
    /// The outcome of one call on a single connection, bounded by `timeout`.
    pub(super) async fn of_whole(timeout: Duration, call: impl Future<Output = RedisResult<()>>) -> Outcome {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(err)) => Outcome::Broken(err.to_string()),
            Err(_) => Outcome::Broken(format!("no answer within {timeout:?}")),
        }
    }
}

/// What a [`Feed`] hears.
#[cfg_attr(
    not(feature = "redis-cluster"),
    allow(dead_code, reason = "only cluster feeds resubscribe by themselves")
)]
pub(super) enum FeedEvent {
    /// A message on a channel.
    Message { channel: String, payload: Vec<u8> },
    /// The subscription to `channel` was made again (the cluster moved its slot, or a node
    /// reconnected): notices may have been missed meanwhile.
    Resubscribed(String),
    /// The server dropped the subscription to `channel` (its node no longer serves the
    /// channel's slot): it must be made again, and notices may have been missed meanwhile.
    Unsubscribed(String),
    /// A connection under the feed dropped (it may be made again, or its node be gone for
    /// good): notices may have been missed on any channel, and the subscriptions it carried
    /// are gone.
    Reconnected,
}

/// The feed of one server, from a [`redis::Client`].
pub(super) async fn server_feed(client: &redis::Client) -> RedisResult<Feed> {
    let (sink, stream) = client.get_async_pubsub().await?.split();
    let events = stream
        .map(|msg| FeedEvent::Message {
            channel: msg.get_channel_name().to_owned(),
            payload: msg.get_payload_bytes().to_vec(),
        })
        .boxed();
    Ok(Feed { sink: Box::new(sink), events, moved: Box::pin(std::future::pending()) })
}

impl FeedSink for redis::aio::PubSubSink {
    fn subscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome> {
        let mut sink = self.clone();
        Box::pin(async move {
            Outcome::of_whole(timeout, redis::aio::PubSubSink::subscribe(&mut sink, &channels)).await
        })
    }

    fn unsubscribe(&self, channels: Vec<String>, timeout: Duration) -> BoxFuture<'static, Outcome> {
        let mut sink = self.clone();
        Box::pin(async move {
            Outcome::of_whole(timeout, redis::aio::PubSubSink::unsubscribe(&mut sink, &channels)).await
        })
    }

    fn ping(&self, timeout: Duration) -> BoxFuture<'static, Outcome> {
        let mut sink = self.clone();
        Box::pin(async move {
            Outcome::of_whole(timeout, async move {
                redis::aio::PubSubSink::ping::<redis::Value>(&mut sink).await.map(drop)
            })
            .await
        })
    }
}

/// A [`FeedSource`] for one server.
pub(super) struct ServerFeeds(pub(super) redis::Client);

impl FeedSource for ServerFeeds {
    fn open(&self) -> BoxFuture<'_, RedisResult<Feed>> {
        Box::pin(server_feed(&self.0))
    }
}

/// How often the subscriber connection is checked with a `PING`.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Notifier {
    shared: Arc<Shared>,
    kick: mpsc::UnboundedSender<()>,
}

#[derive(Debug, Default)]
struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
    /// Hand-offs are passed on as plain release notices (see
    /// [`Notifier::hand_offs_as_releases`]).
    hand_offs_as_releases: AtomicBool,
}

#[derive(Debug)]
struct Channel {
    /// Sent every release notice (and a `Released` after a reconnect).
    notices: watch::Sender<ReleaseNotice>,
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
    /// Start the subscriber task for the feeds of `source` (see the module's docs for where
    /// it runs).
    pub(super) fn start(source: impl FeedSource, call_timeout: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let (kick, kicks) = mpsc::unbounded_channel();
        background::spawn_lasting(Subscriber {
            source: Box::new(source),
            call_timeout,
            shared: Arc::downgrade(&shared),
            kicks,
        });
        Self { shared, kick }
    }

    /// Pass hand-offs on as plain release notices: a waiter then asks again instead of taking
    /// the key from the notice, and finds it its own (a backend that makes every acquisition
    /// wait for replicas must not let one in without that wait).
    pub(super) fn hand_offs_as_releases(&self) {
        self.shared.hand_offs_as_releases.store(true, Ordering::Relaxed);
    }

    /// Register a waiter on `channel`; resolves once the subscription is confirmed, or after
    /// `timeout` (the watch then still works, with the caller's timer as the fallback).
    pub(super) async fn watch(&self, channel: String, timeout: Duration) -> ReleaseWatch {
        let (mut rx, mut subscribed) = {
            let mut channels = self.shared.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notices: watch::channel(ReleaseNotice::Released).0,
                subscribed: watch::channel(false).0,
                waiters: 0,
            });
            entry.waiters += 1;
            (entry.notices.subscribe(), entry.subscribed.subscribe())
        };
        let _ = self.kick.send(());
        let unwatch = Unwatch { shared: Arc::clone(&self.shared), channel, kick: self.kick.clone() };
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, subscribed.wait_for(|s| *s)).await {
            // The confirmation's wake-up (see `confirm`) is not for this waiter: it asks again
            // right after this returns anyway.
            rx.borrow_and_update();
        }
        ReleaseWatch::new(rx, Some(Box::new(unwatch))).with_hearing(subscribed)
    }

    /// Whether Redis has confirmed this process's subscription to `channel`, so that a waiter
    /// here would hear a release or a hand-off now.
    pub(super) fn is_subscribed(&self, channel: impl FnOnce() -> String) -> bool {
        let channels = self.shared.lock();
        // Most acquires happen while nothing waits: no channel name to build then.
        !channels.is_empty() && channels.get(&channel()).is_some_and(|c| *c.subscribed.borrow())
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

/// What the subscriber task keeps: enough to start over on another runtime.
struct Subscriber {
    source: Box<dyn FeedSource>,
    call_timeout: Duration,
    shared: Weak<Shared>,
    /// A waiter came or the last one of a channel left.
    kicks: mpsc::UnboundedReceiver<()>,
}

impl background::Lasting for Subscriber {
    fn run(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(subscriber(&*self.source, self.call_timeout, &self.shared, &mut self.kicks))
    }

    /// The runtime ended, and the connection (driven there) with it.
    fn interrupted(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            disconnected(&shared);
        }
    }
}

/// The connection is gone: releases may have been missed, and no subscription stands. Wake
/// every waiter to ask again (it joins its key's line once subscribed again).
fn disconnected(shared: &Shared) {
    for entry in shared.lock().values() {
        entry.subscribed.send_replace(false);
        entry.notices.send_replace(ReleaseNotice::Released);
    }
}

/// The one task that owns the pub/sub connection: subscribes to what waiters want, drops
/// what they no longer want, forwards notices, and checks that the connection still answers.
/// Ends when the backend is dropped.
async fn subscriber(
    source: &dyn FeedSource,
    call_timeout: Duration,
    shared: &Weak<Shared>,
    kicks: &mut mpsc::UnboundedReceiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Nothing to do until some waiter wants a channel.
        if shared.upgrade().is_none_or(|s| s.lock().is_empty()) && kicks.recv().await.is_none() {
            return;
        }
        let feed = match tokio::time::timeout(call_timeout, source.open()).await {
            Ok(Ok(feed)) => feed,
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
        let Feed { sink, events: mut stream, mut moved } = feed;
        let mut state = Subscriptions::default();
        // The sink's calls under way, each with what it was.
        let mut calls: FuturesUnordered<BoxFuture<'static, (Call, Outcome)>> = FuturesUnordered::new();
        let mut health = tokio::time::interval_at(Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(strong) = shared.upgrade() else { return };
            state.reconcile(&strong, sink.as_ref(), &mut calls, call_timeout);
            drop(strong);
            tokio::select! {
                event = stream.next() => {
                    let Some(strong) = shared.upgrade() else { return };
                    match event {
                        Some(FeedEvent::Message { channel, payload }) => {
                            let Some(mut notice) = parse_notice(&payload) else { continue };
                            if strong.hand_offs_as_releases.load(Ordering::Relaxed) {
                                notice = ReleaseNotice::Released;
                            }
                            if let Some(entry) = strong.lock().get(&channel) {
                                entry.notices.send_replace(notice);
                            }
                        }
                        Some(FeedEvent::Resubscribed(channel)) => {
                            if let Some(entry) = strong.lock().get(&channel) {
                                entry.notices.send_replace(ReleaseNotice::Released);
                            }
                        }
                        Some(FeedEvent::Unsubscribed(channel)) => state.dropped_by_server(&strong, channel),
                        Some(FeedEvent::Reconnected) => {
                            // The subscriptions made on that connection went with it, and the
                            // cluster connection makes them again only if its node comes back;
                            // a killed primary does not (its replica takes its slots). Make
                            // every one again, to each slot's shard as now known (`SSUBSCRIBE`
                            // to a channel already subscribed changes nothing); until then,
                            // waiters do not count on hearing.
                            state.subscribed.clear();
                            disconnected(&strong);
                        }
                        None => break,
                    }
                }
                Some((call, outcome)) = calls.next(), if !calls.is_empty() => {
                    let Some(strong) = shared.upgrade() else { return };
                    if let Err(error) = state.finish(&strong, call, outcome) {
                        tracing::debug!(target: "dlock", %error, "the pub/sub connection failed; reconnecting");
                        break;
                    }
                }
                kick = kicks.recv() => if kick.is_none() { return },
                () = &mut moved => {
                    tracing::debug!(target: "dlock", "the server moved; subscribing again on the new one");
                    break;
                }
                _ = health.tick() => {
                    if !state.pinging {
                        state.pinging = true;
                        calls.push(Box::pin(sink.ping(call_timeout).map(|outcome| (Call::Ping, outcome))));
                    }
                }
            }
        }
        let Some(strong) = shared.upgrade() else { return };
        disconnected(&strong);
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

/// A call of the sink under way.
enum Call {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Ping,
}

/// What one connection is subscribed to, and what is under way.
#[derive(Default)]
struct Subscriptions {
    /// Confirmed by the server.
    subscribed: HashSet<String>,
    /// In a subscribe or unsubscribe call under way: left alone until it ends.
    in_flight: HashSet<String>,
    /// Dropped by the server while a subscribe call for them was under way: that call's
    /// confirmation may be of the subscription the server dropped, so it does not count.
    revoked: HashSet<String>,
    /// Channels whose last call failed without breaking the connection (a cluster node down
    /// or silent), and when they may be tried again.
    retry_at: HashMap<String, Instant>,
    /// A `PING` is under way.
    pinging: bool,
}

impl Subscriptions {
    /// Start the calls that make the connection's subscriptions match the channels waiters
    /// want (leaving alone channels with a call under way, or one that failed too recently),
    /// and confirm at once what already stands.
    fn reconcile(
        &mut self,
        shared: &Shared,
        sink: &dyn FeedSink,
        calls: &mut FuturesUnordered<BoxFuture<'static, (Call, Outcome)>>,
        call_timeout: Duration,
    ) {
        let now = Instant::now();
        self.retry_at.retain(|_, at| *at > now);
        let (wanted, unwanted): (Vec<String>, Vec<String>) = {
            let channels = shared.lock();
            // A channel whose last waiter left and a new one came before its unsubscribe was
            // sent is still subscribed on the connection: tell the new waiter at once.
            for (channel, entry) in channels.iter() {
                if self.subscribed.contains(channel)
                    && !self.in_flight.contains(channel)
                    && !*entry.subscribed.borrow()
                {
                    confirm(entry);
                }
            }
            let idle = |c: &String| !self.in_flight.contains(c) && !self.retry_at.contains_key(c);
            let wanted =
                channels.keys().filter(|c| !self.subscribed.contains(*c) && idle(c)).cloned().collect();
            let unwanted =
                self.subscribed.iter().filter(|c| !channels.contains_key(*c) && idle(c)).cloned().collect();
            (wanted, unwanted)
        };
        if !unwanted.is_empty() {
            self.in_flight.extend(unwanted.iter().cloned());
            let call = sink.unsubscribe(unwanted.clone(), call_timeout);
            calls.push(Box::pin(call.map(move |outcome| (Call::Unsubscribe(unwanted), outcome))));
        }
        if !wanted.is_empty() {
            self.in_flight.extend(wanted.iter().cloned());
            let call = sink.subscribe(wanted.clone(), call_timeout);
            calls.push(Box::pin(call.map(move |outcome| (Call::Subscribe(wanted), outcome))));
        }
    }

    /// The server dropped the subscription to `channel` (its node no longer serves the
    /// channel's slot): it is made again, and its waiters ask again meanwhile.
    ///
    /// The server's word and the answer to a subscribe call come by different paths, so the
    /// drop may be heard before the answer of a subscribe the server had taken just before
    /// it: that answer must not count the channel subscribed.
    fn dropped_by_server(&mut self, shared: &Shared, channel: String) {
        self.subscribed.remove(&channel);
        if let Some(entry) = shared.lock().get(&channel) {
            entry.subscribed.send_replace(false);
            entry.notices.send_replace(ReleaseNotice::Released);
        }
        if self.in_flight.contains(&channel) {
            self.revoked.insert(channel);
        }
    }

    /// Take in a call's outcome: `Err` when the connection must be replaced.
    fn finish(&mut self, shared: &Shared, call: Call, outcome: Outcome) -> Result<(), String> {
        let failed = match outcome {
            Outcome::Done => Vec::new(),
            Outcome::Partly { failed } => failed,
            Outcome::Broken(error) => return Err(error),
        };
        let retry_at = Instant::now() + HEALTH_CHECK;
        match call {
            Call::Ping => self.pinging = false,
            Call::Subscribe(channels) => {
                let entries = shared.lock();
                for channel in channels {
                    self.in_flight.remove(&channel);
                    if self.revoked.remove(&channel) {
                        // Subscribed again by the next reconcile.
                    } else if failed.contains(&channel) {
                        self.retry_at.insert(channel, retry_at);
                    } else {
                        if let Some(entry) = entries.get(&channel) {
                            confirm(entry);
                        }
                        self.subscribed.insert(channel);
                    }
                }
            }
            Call::Unsubscribe(channels) => {
                for channel in channels {
                    self.in_flight.remove(&channel);
                    if failed.contains(&channel) {
                        self.retry_at.insert(channel, retry_at);
                    } else {
                        self.subscribed.remove(&channel);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Mark a channel's subscription confirmed, and wake its waiters: any that asked while it
/// was not (after a reconnect, or past their wait for the confirmation) did not join the
/// key's waiting line, and asking again now puts them in it.
///
/// The notice goes first: a waiter that sees the confirmation (on another thread) then also
/// sees that notice as already delivered, and does not mistake it for a later release.
fn confirm(entry: &Channel) {
    entry.notices.send_replace(ReleaseNotice::Released);
    entry.subscribed.send_replace(true);
}

/// Read a notice: `r` (released) or `g:<token>:<owner>` (handed to `owner`).
fn parse_notice(payload: &[u8]) -> Option<ReleaseNotice> {
    if payload == b"r" {
        return Some(ReleaseNotice::Released);
    }
    let (token, owner) = str::from_utf8(payload.strip_prefix(b"g:")?).ok()?.split_once(':')?;
    if owner.is_empty() {
        return None;
    }
    Some(ReleaseNotice::Granted { owner: Arc::from(owner), fencing_token: token.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records the channels it is asked to subscribe to, and answers at once.
    #[derive(Default, Clone)]
    struct RecordingSink(Arc<Mutex<Vec<Vec<String>>>>);

    impl FeedSink for RecordingSink {
        fn subscribe(&self, channels: Vec<String>, _: Duration) -> BoxFuture<'static, Outcome> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).push(channels);
            Box::pin(std::future::ready(Outcome::Done))
        }
        fn unsubscribe(&self, _: Vec<String>, _: Duration) -> BoxFuture<'static, Outcome> {
            Box::pin(std::future::ready(Outcome::Done))
        }
        fn ping(&self, _: Duration) -> BoxFuture<'static, Outcome> {
            Box::pin(std::future::ready(Outcome::Done))
        }
    }

    /// The server drops a channel's subscription (its slot moved) while this process's
    /// subscribe for it is under way, and the drop is heard first: the subscribe's answer
    /// must not count the channel subscribed, or its waiters would count on notices that
    /// never come. It is subscribed again instead.
    #[test]
    fn a_subscription_the_server_dropped_while_it_was_being_made_is_made_again() {
        let shared = Shared::default();
        shared.lock().insert(
            "c".to_owned(),
            Channel {
                notices: watch::channel(ReleaseNotice::Released).0,
                subscribed: watch::channel(false).0,
                waiters: 1,
            },
        );
        let sink = RecordingSink::default();
        let mut calls = FuturesUnordered::new();
        let mut state = Subscriptions::default();
        state.reconcile(&shared, &sink, &mut calls, Duration::from_secs(1));
        assert_eq!(*sink.0.lock().expect("sink"), [["c"]], "the channel is subscribed to");

        state.dropped_by_server(&shared, "c".to_owned());
        state.finish(&shared, Call::Subscribe(vec!["c".to_owned()]), Outcome::Done).expect("the feed stands");
        assert!(!state.subscribed.contains("c"), "a dropped subscription counted as made");
        assert!(!*shared.lock()["c"].subscribed.borrow(), "waiters told they hear");

        state.reconcile(&shared, &sink, &mut calls, Duration::from_secs(1));
        assert_eq!(*sink.0.lock().expect("sink"), [["c"], ["c"]], "the channel is subscribed to again");
        state.finish(&shared, Call::Subscribe(vec!["c".to_owned()]), Outcome::Done).expect("the feed stands");
        assert!(state.subscribed.contains("c") && *shared.lock()["c"].subscribed.borrow());
    }

    #[test]
    fn notices_are_parsed() {
        assert_eq!(parse_notice(b"r"), Some(ReleaseNotice::Released));
        assert_eq!(
            parse_notice(b"g:42:0123abcd"),
            Some(ReleaseNotice::Granted { owner: Arc::from("0123abcd"), fencing_token: 42 })
        );
        // Anything else is ignored: the waiter asks again on its timer.
        for junk in [&b"g:"[..], b"g:x:owner", b"g:42", b"g:42:", b"rr", b"", &[0xff, 0xfe]] {
            assert_eq!(parse_notice(junk), None, "{junk:?}");
        }
    }
}
