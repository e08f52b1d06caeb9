// `{name}` where `name` is a binding is the `format!` habit: it would lock every call on the
// one constant key "user:{user_id}". Braces around anything else stay text (ui/pass/free_fns.rs).
use dlock::distributed_lock;

#[distributed_lock(key = "user:{user_id}")]
async fn pay(user_id: u64) -> Result<u64, dlock::Error> {
    Ok(user_id)
}

pub struct Request {
    pub order_id: u64,
}

#[distributed_lock(key = "order:{req.order_id}:{tenant:?}")]
async fn field_and_debug(req: Request, tenant: String) -> Result<u64, dlock::Error> {
    let _ = tenant;
    Ok(req.order_id)
}

pub struct Account {
    pub id: u64,
}

impl Account {
    #[distributed_lock(key = "{self.id}:cart")]
    pub async fn checkout(&self) -> Result<u64, dlock::Error> {
        Ok(self.id)
    }
}

fn main() {}
