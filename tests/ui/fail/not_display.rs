use dlock::distributed_lock;

#[derive(Debug)]
pub struct UserId(u64);

pub struct Request {
    pub user: UserId,
}

#[distributed_lock(key = "user:<user_id>")]
async fn param(user_id: UserId) -> Result<(), dlock::Error> {
    let _ = user_id;
    Ok(())
}

#[distributed_lock(key = "user:<req.user>")]
async fn field(req: Request) -> Result<(), dlock::Error> {
    let _ = req;
    Ok(())
}

#[distributed_lock(key = "user:<req.usr>")]
async fn no_such_field(req: Request) -> Result<(), dlock::Error> {
    let _ = req;
    Ok(())
}

fn main() {}
