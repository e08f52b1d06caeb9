//! Runnable examples for dlock live beside this file; see the README.

/// `err` and the causes its message says follow, on one line (what the examples print when a
/// backend cannot be reached and they fall back to the in-process one).
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        text.push_str(": ");
        text.push_str(&source.to_string());
        cause = source.source();
    }
    text
}
