//! What `/proc` says of a process: whether it runs, is stopped, or has exited (a zombie takes
//! any signal without error, so a fault must look here before it signals). A leaf: it uses
//! nothing else of this crate.

/// The state letter of process `pid` (`S`, `R`, `T` stopped, `Z` exited, …) and its parent's
/// pid, from `/proc`; `None` when there is no such process.
pub(crate) fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
    let mut fields = stat.rsplit_once(") ")?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The state letter of process `pid`; see [`stat`].
pub(crate) fn state(pid: u32) -> Option<char> {
    stat(pid).map(|(state, _)| state)
}

/// Whether process `pid` is gone, or has exited and waits to be reaped (a zombie).
pub(crate) fn has_exited(pid: u32) -> bool {
    matches!(state(pid), None | Some('Z' | 'X'))
}
