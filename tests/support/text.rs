//! What users read of an error: [`chain`], the message and its causes as anyhow's `{:#}`
//! prints them.

/// The error and its causes, as `{:#}` prints them with anyhow: `top: cause: cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
