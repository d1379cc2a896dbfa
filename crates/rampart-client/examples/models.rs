//! The model catalogue, every page: `cargo run -p rampart-client --example models`.

#![allow(clippy::print_stdout)]

use futures_util::TryStreamExt;
use rampart_client::{Client, ListParams};

#[tokio::main]
async fn main() -> Result<(), rampart_client::Error> {
    let client = Client::from_env()?;
    let mut models = client.models().list_all(ListParams::limit(100));
    while let Some(model) = models.try_next().await? {
        println!(
            "{:<32} {:<28} {}",
            model.id, model.display_name, model.created_at
        );
    }
    Ok(())
}
