// A parameter pattern that does not fit its type is reported once, as for the plain fn, even
// though the attribute renames the parameter and destructures it in the body.
use dlock::distributed_lock;

pub struct Point {
    pub x: u64,
    pub y: u64,
}

#[distributed_lock(key = "point:<id>")]
async fn tuple_for_struct(id: u64, (x, _): Point) -> Result<u64, dlock::Error> {
    Ok(id + x)
}

fn main() {}
