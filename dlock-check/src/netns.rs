//! Network namespaces the checker creates for its workers, so it can cut some of them off
//! from the backend while the rest (and the store) carry on.
//!
//! Worker slot `i` runs in namespace `dlck-<tag>-<i>`, joined to the host by a veth pair:
//! the worker is `10.<net>.<i>.2`; on the host side, `10.<net>.<i>.1` is where the checker's
//! proxy to the backend listens and `10.<net>.<i>.3` where its proxy to the store listens.
//! A topology the checker starts (a Redis Cluster, a Sentinel group) is not behind a proxy:
//! its nodes hand their clients each other's addresses. Node `k` listens on `10.<net>.254.<k+1>`
//! too (addresses on a veth pair of the run's own on the host, `dk<tag>t`/`dk<tag>u`) and
//! announces it; each namespace routes `10.<net>.254.0/23` through its veth.
//!
//! A partition ([`Cut::Backend`]) adds `blackhole` routes to `10.<net>.<i>.1/32` and
//! `10.<net>.254.0/24` inside the worker's namespace: what the worker sends to the backend is
//! dropped (its open connections go silent, new ones fail), the store stays reachable. A
//! partition from one node ([`Cut::Node`]) adds the route to that node's address alone.
//! Healing deletes the routes.
//!
//! Everything is created with names carrying the run's tag and deleted when the
//! [`Namespaces`] are dropped; nothing else on the machine is touched.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// One worker slot's namespace and addresses.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The namespace's name.
    pub ns: String,
    /// Host side: where the backend proxy listens for this slot.
    pub backend_ip: Ipv4Addr,
    /// Host side: where the store proxy listens for this slot.
    pub store_ip: Ipv4Addr,
    /// The worker's own address.
    pub worker_ip: Ipv4Addr,
    host_if: String,
}

/// What a partition cuts a worker off from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The whole backend: its proxy, and every node of a topology.
    Backend,
    /// One node of a topology, at this address ([`Namespaces::topology_ip`]).
    Node(Ipv4Addr),
}

/// How many topology nodes get an address of their own.
pub const TOPOLOGY_NODES: u8 = 16;

/// The namespaces of one run.
#[derive(Debug)]
pub struct Namespaces {
    slots: Vec<Slot>,
    /// The network the namespaces were made in: `10.<net>.0.0/16`.
    net: u8,
    /// The host's end of the veth pair that carries the topology's addresses, once made.
    topology_if: Option<String>,
}

/// Run `ip` with `args`; an error carries what it printed.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2); is it installed?")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether this machine lets the checker create a network namespace (root, iproute2, a
/// kernel with namespaces): `Err` says why not.
pub fn probe() -> Result<(), String> {
    let name = format!("dlck-probe-{}", std::process::id());
    ip(&["netns", "add", &name]).map_err(|err| format!("{err:#}"))?;
    let veth = ip(&["-n", &name, "link", "add", "dlckprobe0", "type", "veth", "peer", "name", "dlckprobe1"]);
    let _ = ip(&["netns", "del", &name]);
    veth.map_err(|err| format!("{err:#}"))
}

/// A /16 under 10/8 that no address or route of the machine uses.
fn free_net() -> anyhow::Result<u8> {
    let out = Command::new("ip").args(["-4", "-o", "addr"]).output().context("running `ip addr`")?;
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .context("running `ip route`")?;
    let used = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&routes.stdout));
    if used.contains(" 10.0.0.0/8") || used.starts_with("10.0.0.0/8") {
        bail!("this machine routes all of 10.0.0.0/8 somewhere: no room for the workers' namespaces");
    }
    for _ in 0..200 {
        let net = 100 + rand::random::<u8>() % 150;
        if !used.contains(&format!("10.{net}.")) {
            return Ok(net);
        }
    }
    bail!("no free 10.x.0.0/16 for the workers' namespaces")
}

impl Namespaces {
    /// Create `count` namespaces, tagged `tag` (four characters at most).
    pub fn create(tag: &str, count: u32) -> anyhow::Result<Self> {
        // Two runs starting together could pick the same /16: after creating, make sure no
        // other interface has an address in it, and pick another if one does.
        let mut last = None;
        for _ in 0..5 {
            let net = free_net()?;
            let made = Self::create_in(tag, count, net)?;
            let out = Command::new("ip").args(["-4", "-o", "addr"]).output().context("running `ip addr`")?;
            let listing = String::from_utf8_lossy(&out.stdout);
            let ours: Vec<&str> =
                made.slots.iter().map(|s| s.host_if.as_str()).chain(made.topology_if.as_deref()).collect();
            let clash = listing.lines().any(|line| {
                line.contains(&format!(" 10.{net}."))
                    && !ours.iter().any(|i| line.contains(&format!(" {i} ")))
            });
            if !clash {
                return Ok(made);
            }
            last = Some(net);
        }
        bail!("another program took 10.{}.0.0/16 each time; try again", last.unwrap_or_default())
    }

    fn create_in(tag: &str, count: u32, net: u8) -> anyhow::Result<Self> {
        let mut made = Self { slots: Vec::new(), net, topology_if: None };
        // A veth pair whose ends both stay on the host: one holds the topology's addresses (a
        // `dummy` link would do, but not every kernel has the module).
        let (t, u) = (format!("dk{tag}t"), format!("dk{tag}u"));
        ip(&["link", "add", &t, "type", "veth", "peer", "name", &u])?;
        made.topology_if = Some(t.clone());
        for k in 0..TOPOLOGY_NODES {
            ip(&["addr", "add", &format!("{}/32", made.topology_ip(k)), "dev", &t])?;
        }
        ip(&["link", "set", &t, "up"])?;
        ip(&["link", "set", &u, "up"])?;
        for i in 0..count.min(250) {
            let i8 = u8::try_from(i).unwrap_or(u8::MAX);
            let slot = Slot {
                ns: format!("dlck-{tag}-{i}"),
                backend_ip: Ipv4Addr::new(10, net, i8, 1),
                worker_ip: Ipv4Addr::new(10, net, i8, 2),
                store_ip: Ipv4Addr::new(10, net, i8, 3),
                host_if: format!("dk{tag}h{i}"),
            };
            let ns_if = format!("dk{tag}n{i}");
            ip(&["netns", "add", &slot.ns])?;
            made.slots.push(slot.clone());
            ip(&["-n", &slot.ns, "link", "set", "lo", "up"])?;
            ip(&["link", "add", &slot.host_if, "type", "veth", "peer", "name", &ns_if, "netns", &slot.ns])?;
            ip(&["addr", "add", &format!("{}/24", slot.backend_ip), "dev", &slot.host_if])?;
            ip(&["addr", "add", &format!("{}/24", slot.store_ip), "dev", &slot.host_if])?;
            ip(&["link", "set", &slot.host_if, "up"])?;
            ip(&["-n", &slot.ns, "addr", "add", &format!("{}/24", slot.worker_ip), "dev", &ns_if])?;
            ip(&["-n", &slot.ns, "link", "set", &ns_if, "up"])?;
            let via = slot.backend_ip.to_string();
            ip(&["-n", &slot.ns, "route", "add", &format!("10.{net}.254.0/23"), "via", &via])?;
        }
        Ok(made)
    }

    /// Where a topology's node `k` (below [`TOPOLOGY_NODES`]; later ones share the last)
    /// listens for the workers: an address of the host every namespace routes to (see the
    /// module's doc).
    pub fn topology_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 254, k.min(TOPOLOGY_NODES - 1) + 1)
    }

    /// The addresses of every topology node, in order ([`topology_ip`](Self::topology_ip)).
    pub fn topology_ips(&self) -> Vec<Ipv4Addr> {
        (0..TOPOLOGY_NODES).map(|k| self.topology_ip(k)).collect()
    }

    /// The destinations of the routes that cut slot `slot` off.
    fn cut_off(&self, slot: &Slot, cut: Cut) -> Vec<String> {
        match cut {
            Cut::Backend => vec![format!("{}/32", slot.backend_ip), format!("10.{}.254.0/24", self.net)],
            Cut::Node(ip) => vec![format!("{ip}/32")],
        }
    }

    /// The slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// `program` run inside slot `i`'s namespace (`ip netns exec`, which execs it: the
    /// process id is the program's).
    pub fn command(&self, i: usize, program: &std::path::Path) -> anyhow::Result<Command> {
        let slot = self.slots.get(i).with_context(|| format!("no namespace for slot {i}"))?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &slot.ns]).arg(program);
        Ok(command)
    }

    /// Cut slot `i` off from the backend, or from one node of a topology. On an error, the
    /// routes it had added are deleted again (an error says so if that fails too).
    pub fn partition(&self, i: usize, cut: Cut) -> anyhow::Result<()> {
        let slot = self.slots.get(i).with_context(|| format!("no namespace for slot {i}"))?;
        let dests = self.cut_off(slot, cut);
        for (n, dest) in dests.iter().enumerate() {
            if let Err(err) = ip(&["-n", &slot.ns, "route", "add", "blackhole", dest]) {
                // Every one is tried, even if one fails.
                let undone: Vec<anyhow::Result<()>> = dests[..n]
                    .iter()
                    .map(|d| ip(&["-n", &slot.ns, "route", "del", "blackhole", d]))
                    .collect();
                let undone: anyhow::Result<()> = undone.into_iter().collect();
                return Err(match undone {
                    Ok(()) => err,
                    Err(undo) => anyhow::anyhow!("{err:#}; and it stays half cut off: {undo:#}"),
                });
            }
        }
        Ok(())
    }

    /// Reconnect slot `i` (every route the partition added is deleted, even if one fails).
    pub fn heal(&self, i: usize, cut: Cut) -> anyhow::Result<()> {
        let slot = self.slots.get(i).with_context(|| format!("no namespace for slot {i}"))?;
        let healed: Vec<anyhow::Result<()>> = self
            .cut_off(slot, cut)
            .iter()
            .map(|dest| ip(&["-n", &slot.ns, "route", "del", "blackhole", dest]))
            .collect();
        healed.into_iter().collect()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for slot in &self.slots {
            // Deleting the namespace deletes the veth pair; the explicit delete covers a pair
            // whose namespace end is already gone.
            let _ = ip(&["netns", "del", &slot.ns]);
            let _ = ip(&["link", "del", &slot.host_if]);
        }
        if let Some(t) = &self.topology_if {
            let _ = ip(&["link", "del", t]);
        }
    }
}
