//! Attributes on parameters mean what they mean on the plain function: `#[cfg]` removes the
//! parameter (a plain one or a pattern), lint attributes (`allow`, `expect`, …) apply to it.
#![deny(warnings)]

use dlock::distributed_lock;

#[distributed_lock(key = "cfg:<id>")]
pub async fn cfg_param(id: u64, #[cfg(any())] debug_name: String) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "cfg:<id>")]
pub async fn cfg_pattern(id: u64, #[cfg(any())] (a, _): (u8, u8)) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "cfg:<id>")]
pub async fn cfg_kept(id: u64, #[cfg(any(unix, windows))] (a, _): (u8, u8)) -> Result<u64, dlock::Error> {
    Ok(id + u64::from(a))
}

#[distributed_lock(key = "cfg:<id>")]
pub async fn cfg_attr_allow(
    id: u64,
    #[cfg_attr(any(unix, windows), allow(unused_variables))] extra: String,
) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "allow:<id>")]
pub async fn allow_unused(id: u64, #[allow(unused_variables)] extra: String) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "allow:<id>")]
pub async fn allow_unused_mut(
    id: u64,
    #[allow(unused_mut)] mut extra: String,
) -> Result<usize, dlock::Error> {
    Ok(extra.len() + usize::try_from(id).unwrap_or(0))
}

#[distributed_lock(key = "expect:<id>")]
pub async fn expect_unused(id: u64, #[expect(unused_variables)] extra: String) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "expect:<id>")]
pub async fn expect_unused_pattern(
    id: u64,
    #[expect(unused_variables)] (extra, _): (String, u8),
) -> Result<u64, dlock::Error> {
    Ok(id)
}

#[distributed_lock(key = "expect:<id>")]
pub async fn cfg_attr_expect(
    id: u64,
    #[cfg_attr(any(unix, windows), expect(unused_variables))] extra: String,
) -> Result<u64, dlock::Error> {
    Ok(id)
}

fn main() {
    let _ = (cfg_param, cfg_pattern, cfg_kept, cfg_attr_allow, allow_unused, allow_unused_mut);
    let _ = (expect_unused, expect_unused_pattern, cfg_attr_expect);
}
