//! "Did you mean …?" — the closest name to a misspelt one.

/// Picks the candidate closest to `name` by edit distance (optimal string alignment, so a
/// swapped pair of letters counts as one edit), if any is close enough to be a plausible typo.
pub(crate) fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Allow one edit for short names, about a third of the letters for longer ones.
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (distance(name, candidate), candidate))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance between two strings, counted in `char`s.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j] = distance between a[..i] and b[..j]
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Formats names as "`a`, `b`, `c`" for an error message.
pub(crate) fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("ttl", "ttl"), 0);
        assert_eq!(distance("tll", "ttl"), 1);
        assert_eq!(distance("tlt", "ttl"), 1);
        assert_eq!(distance("keys", "key"), 1);
        assert_eq!(distance("", "key"), 3);
        assert_eq!(distance("sevrice", "service"), 1);
    }

    #[test]
    fn suggestions() {
        let options = ["key", "ttl", "wait", "service", "renew", "crate"];
        assert_eq!(closest("tll", options), Some("ttl"));
        assert_eq!(closest("kye", options), Some("key"));
        assert_eq!(closest("serivce", options), Some("service"));
        assert_eq!(closest("renwe", options), Some("renew"));
        assert_eq!(closest("timeout", options), None);
        assert_eq!(closest("usr_id", ["user_id", "amount"]), Some("user_id"));
        assert_eq!(closest("x", ["user_id", "amount"]), None);
    }

    #[test]
    fn lists() {
        assert_eq!(list(["a", "b"]), "`a`, `b`");
        assert_eq!(list([]), "");
    }
}
