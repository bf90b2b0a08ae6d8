//! `sqlx::migrate!` embeds `migrations/` at compile time, and cargo does not know a new file in
//! that folder changes the crate: without this, a new migration is silently left out of an
//! incremental build (sqlx's documentation advises exactly this line).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
