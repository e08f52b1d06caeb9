//! `#[distributed_lock]` drops every argument inside the lock, in the order the same function
//! without the attribute drops them.
//!
//! Each case is a pair of functions with one signature and one body, made by [`twins!`]: one
//! annotated, one plain. Arguments are [`Noisy`] values that log their drop together with
//! whether the lock is held at that moment (read from the test's own `MemoryBackend`, behind a
//! service registered for that test alone). The annotated call must log every drop as held;
//! the order of the drops must be the plain call's.

use std::sync::{Arc, Mutex};

use dlock::{LockService, MemoryBackend, distributed_lock};

/// What a test's arguments report to.
#[derive(Clone, Default)]
struct Probe {
    drops: Arc<Mutex<Vec<(&'static str, bool)>>>,
    /// The backend of the service under test; `None` for the plain twin.
    backend: Option<MemoryBackend>,
}

impl Probe {
    /// A probe whose backend serves a service registered as `name`.
    fn register(name: &'static str) -> Probe {
        let backend = MemoryBackend::new();
        let service = LockService::new(backend.clone());
        dlock::register(name, service).unwrap_or_else(|err| panic!("registering `{name}`: {err}"));
        Probe { drops: Arc::default(), backend: Some(backend) }
    }

    fn noisy(&self, name: &'static str) -> Noisy {
        Noisy { name, probe: self.clone() }
    }

    fn drops(&self) -> Vec<(&'static str, bool)> {
        self.drops.lock().map(|drops| drops.clone()).unwrap_or_default()
    }

    fn order(&self) -> Vec<&'static str> {
        self.drops().into_iter().map(|(name, _)| name).collect()
    }
}

/// An argument that logs its drop, and whether the lock was held then.
struct Noisy {
    name: &'static str,
    probe: Probe,
}

impl Drop for Noisy {
    fn drop(&mut self) {
        let held = self.probe.backend.as_ref().is_some_and(|backend| backend.held_count() > 0);
        if let Ok(mut drops) = self.probe.drops.lock() {
            drops.push((self.name, held));
        }
    }
}

/// A value whose pattern binds all of it.
struct Wrapper(Noisy);

/// A value with two fields, for patterns that bind both or one of them.
struct Pair(Noisy, Noisy);

#[allow(dead_code, reason = "the fields a pattern leaves out are only dropped")]
struct Record {
    id: Noisy,
    name: Noisy,
    note: Noisy,
}

/// The annotated fn `$locked` and the plain fn `$plain`, with the same parameters and body.
macro_rules! twins {
    ($service:literal, $locked:ident, $plain:ident, ($($params:tt)*) { $($body:tt)* }) => {
        #[distributed_lock(key = "drops", service = $service)]
        async fn $locked($($params)*) -> Result<u32, dlock::Error> { $($body)* }

        // clippy takes rustc's lowering of a plain `async fn` with a `ref` parameter for a
        // `let ref`; the annotated twin draws no such warning.
        #[allow(clippy::toplevel_ref_arg)]
        async fn $plain($($params)*) -> Result<u32, dlock::Error> { $($body)* }
    };
}

/// Calls both twins with arguments made by `$args` (a closure from a probe to the argument
/// tuple) and checks the drops.
macro_rules! check_twins {
    ($service:literal, $locked:path, $plain:path, $args:expr) => {{
        let make = $args;
        let locked = Probe::register($service);
        let plain = Probe::default();
        let (a, b, c, d) = make(&locked);
        $locked(a, b, c, d).await.unwrap_or_else(|err| panic!("{}: {err}", $service));
        let (a, b, c, d) = make(&plain);
        $plain(a, b, c, d).await.unwrap_or_else(|err| panic!("{}: {err}", $service));
        assert_dropped_inside_in_order(&locked, &plain);
    }};
}

fn assert_dropped_inside_in_order(locked: &Probe, plain: &Probe) {
    let drops = locked.drops();
    let outside: Vec<_> = drops.iter().filter(|(_, held)| !held).map(|(name, _)| *name).collect();
    assert!(
        outside.is_empty(),
        "dropped after the lock was released: {outside:?} (all drops, with `held`: {drops:?})"
    );
    assert_eq!(locked.order(), plain.order(), "drop order with the attribute (left) and without (right)");
    assert_eq!(locked.backend.as_ref().map(MemoryBackend::held_count), Some(0), "released at the end");
}

twins!("drops:wildcards", wildcards, wildcards_plain, (used: Noisy, _: Noisy, _unused: Noisy, last: Noisy) {
    let _ = (&used, &last);
    Ok(1)
});

#[tokio::test]
async fn unused_and_wildcard_arguments_are_dropped_inside_the_lock_in_order() {
    check_twins!("drops:wildcards", wildcards, wildcards_plain, |p: &Probe| {
        (p.noisy("used"), p.noisy("_"), p.noisy("_unused"), p.noisy("last"))
    });
}

twins!("drops:patterns", patterns, patterns_plain, (
    (first, _): (Noisy, Noisy),
    Wrapper(inner): Wrapper,
    mut x: Noisy,
    Pair(_, right): Pair,
) {
    x = Noisy { name: "x reassigned", probe: x.probe.clone() };
    let _ = (&first, &inner, &x, &right);
    Ok(2)
});

#[tokio::test]
async fn pattern_arguments_are_dropped_inside_the_lock_in_order() {
    check_twins!("drops:patterns", patterns, patterns_plain, |p: &Probe| {
        (
            (p.noisy("tuple.0"), p.noisy("tuple._")),
            Wrapper(p.noisy("wrapper.inner")),
            p.noisy("mut x"),
            Pair(p.noisy("pair._"), p.noisy("pair.right")),
        )
    });
}

twins!("drops:unused_patterns", unused_patterns, unused_patterns_plain, (
    Pair(left, right): Pair,
    Record { id, .. }: Record,
    ref r: Noisy,
    (_, _): (Noisy, Noisy),
) {
    let _local = Noisy { name: "body local", probe: r.probe.clone() };
    let _ = (&left, &right, &id);
    Ok(3)
});

#[tokio::test]
async fn patterns_the_body_does_not_use_are_dropped_inside_the_lock_in_order() {
    check_twins!("drops:unused_patterns", unused_patterns, unused_patterns_plain, |p: &Probe| {
        (
            Pair(p.noisy("pair.left"), p.noisy("pair.right")),
            Record { id: p.noisy("record.id"), name: p.noisy("record.name"), note: p.noisy("record.note") },
            p.noisy("ref r"),
            (p.noisy("tuple.0"), p.noisy("tuple.1")),
        )
    });
}

#[allow(dead_code, reason = "only dropped")]
struct Account {
    owner: Noisy,
}

impl Account {
    #[distributed_lock(key = "drops", service = "drops:self")]
    async fn close(self, _: Noisy, note: Noisy) -> Result<u32, dlock::Error> {
        let _ = &note;
        Ok(4)
    }

    async fn close_plain(self, _: Noisy, note: Noisy) -> Result<u32, dlock::Error> {
        let _ = &note;
        Ok(4)
    }
}

#[tokio::test]
async fn a_receiver_taken_by_value_is_dropped_inside_the_lock_last() {
    let locked = Probe::register("drops:self");
    let plain = Probe::default();
    let account = Account { owner: locked.noisy("self.owner") };
    account.close(locked.noisy("_"), locked.noisy("note")).await.unwrap_or_else(|err| panic!("{err}"));
    let account = Account { owner: plain.noisy("self.owner") };
    account.close_plain(plain.noisy("_"), plain.noisy("note")).await.unwrap_or_else(|err| panic!("{err}"));
    assert_dropped_inside_in_order(&locked, &plain);
    assert_eq!(locked.order().last(), Some(&"self.owner"));
}

twins!("drops:error", fails, fails_plain, (kept: Noisy, _: Noisy, _c: Noisy, _d: Noisy) {
    let _ = &kept;
    Err(dlock::Error::NotRegistered { service: Some("the body's own error".to_owned()) })
});

#[tokio::test]
async fn arguments_are_dropped_inside_the_lock_when_the_body_fails() {
    let locked = Probe::register("drops:error");
    let plain = Probe::default();
    let args = |p: &Probe| (p.noisy("kept"), p.noisy("_"), p.noisy("_c"), p.noisy("_d"));
    let (a, b, c, d) = args(&locked);
    assert!(fails(a, b, c, d).await.is_err());
    let (a, b, c, d) = args(&plain);
    assert!(fails_plain(a, b, c, d).await.is_err());
    assert_dropped_inside_in_order(&locked, &plain);
}
