//! Keys from bindings inside parameter patterns: axum extractors, tuples, structs, slices,
//! `mut`, `ref`, `x @ ..`, and fields of them; and an annotated fn as an axum handler.
#![deny(warnings)]

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dlock::distributed_lock;

pub struct PayRequest {
    pub user_id: u64,
    pub order: Order,
    pub pair: (u32, String),
}

pub struct Order {
    pub id: String,
}

#[derive(Debug)]
pub struct AppError(dlock::Error);

impl From<dlock::Error> for AppError {
    fn from(error: dlock::Error) -> Self {
        AppError(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (StatusCode::CONFLICT, self.0.to_string()).into_response()
    }
}

#[distributed_lock(key = "user:<user_id>")]
pub async fn path(Path(user_id): Path<u64>) -> Result<String, AppError> {
    Ok(user_id.to_string())
}

#[distributed_lock(
    key = "user:<req.user_id>",
    key = "order:<req.order.id>",
    key = "<req.pair.0>:<req.pair.1>"
)]
pub async fn json(Json(req): Json<PayRequest>) -> Result<u64, AppError> {
    Ok(req.user_id)
}

#[distributed_lock(key = "<a>-<b>-<c>")]
pub async fn tuples((a, (b, _)): (u8, (u16, u32)), [c, ..]: [u8; 2]) -> Result<u16, dlock::Error> {
    Ok(u16::from(a) + b + u16::from(c))
}

pub struct Point {
    pub x: i32,
    pub y: i32,
    pub z: i32,
}

#[distributed_lock(key = "point:<x>:<py>")]
pub async fn structs(Point { x, y: py, .. }: Point) -> Result<i32, dlock::Error> {
    Ok(x + py)
}

#[distributed_lock(key = "<count>:<name>:<first>:<borrowed>")]
pub async fn modifiers(
    mut count: u32,
    ref name: String,
    all @ [first, ..]: [u8; 3],
    &borrowed: &u8,
) -> Result<u32, dlock::Error> {
    count += u32::from(first) + u32::from(borrowed) + all.len() as u32;
    let _ = name;
    Ok(count)
}

#[derive(Clone)]
pub struct AppState {
    pub region: String,
}

#[distributed_lock(key = "{<state.region>}:user:<user_id>", ttl = "10s", wait = "2s")]
pub async fn handler(State(state): State<AppState>, Path(user_id): Path<u64>) -> Result<String, AppError> {
    Ok(format!("{}:{user_id}", state.region))
}

// The annotated function is an axum handler: its future is `Send` and it implements `Handler`.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/pay/{user_id}", axum::routing::post(handler))
        .route("/path/{user_id}", axum::routing::get(path))
        .with_state(AppState { region: "eu".to_owned() })
}

fn main() {
    let _ = router;
}
