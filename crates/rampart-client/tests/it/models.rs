//! The model catalogue: one page, every page as a stream, one model, aliases.

use futures_util::TryStreamExt;
use rampart_client::{Error, ListParams};

use crate::harness::Sim;

#[tokio::test]
async fn lists_pages_and_streams_the_whole_catalogue() {
    let sim = Sim::start().await;
    let c = sim.client();
    let catalogue: Vec<String> = rampart_sim::default_catalogue()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(catalogue.len() > 3);

    let first = c.models().list(&ListParams::limit(2)).await.unwrap();
    assert_eq!(first.data.len(), 2);
    assert!(first.has_more);
    assert_eq!(first.first_id.as_deref(), Some(catalogue[0].as_str()));
    assert!(first.request_id().is_some());
    let second = c
        .models()
        .list(&ListParams {
            after_id: first.last_id.clone(),
            ..ListParams::limit(2)
        })
        .await
        .unwrap();
    assert_eq!(second.data[0].id, catalogue[2]);

    let all: Vec<String> = c
        .models()
        .list_all(ListParams::limit(3))
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, catalogue);
    let pages = catalogue.len().div_ceil(3) as u64;
    assert_eq!(sim.calls("models").await, 2 + pages);

    // Backwards from the end, as the SDKs page with before_id.
    let last = catalogue.last().unwrap().clone();
    let newer: Vec<String> = c
        .models()
        .list_all(ListParams {
            before_id: Some(last),
            ..ListParams::limit(2)
        })
        .map_ok(|m| m.id)
        .try_collect()
        .await
        .unwrap();
    let mut newer_sorted = newer.clone();
    newer_sorted.sort();
    let mut expected = catalogue[..catalogue.len() - 1].to_vec();
    expected.sort();
    assert_eq!(newer_sorted, expected);
}

#[tokio::test]
async fn gets_a_model_by_id_or_alias() {
    let sim = Sim::start().await;
    let c = sim.client();
    let m = c.models().get("claude-sonnet-4-6").await.unwrap();
    assert_eq!(
        (m.id.as_str(), m.kind.as_str()),
        ("claude-sonnet-4-6", "model")
    );
    assert!(!m.display_name.is_empty());
    let alias = c.models().get("claude-haiku-4-5").await.unwrap();
    assert_eq!(alias.id, "claude-haiku-4-5-20251001");
    let err = c.models().get("claude-nope-1").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = c.models().get("..").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn a_bad_limit_is_the_apis_400() {
    let sim = Sim::start().await;
    let err = sim
        .client()
        .models()
        .list(&ListParams::limit(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");
}
