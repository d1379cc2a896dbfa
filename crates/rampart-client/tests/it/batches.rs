//! Message batches: create from typed requests, retrieve, wait until ended, list, results as a
//! stream, cancel, delete.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use rampart_client::types::{BatchRequest, BatchResult, ProcessingStatus};
use rampart_client::{Client, Error, ListParams};

use crate::harness::{Sim, ask};

fn requests(n: usize) -> Vec<BatchRequest<rampart_client::types::MessageCreateParams>> {
    (0..n)
        .map(|i| BatchRequest {
            custom_id: format!("req-{i}"),
            params: ask(&format!("echo: answer {i}"), 32),
        })
        .collect()
}

async fn sim(processing_ms: u64) -> Sim {
    Sim::with(rampart_sim::SimConfig {
        batch_processing_ms: processing_ms,
        ..rampart_sim::SimConfig::default()
    })
    .await
}

/// Create, wait, read the results; returns them by custom_id.
pub async fn round_trip(c: &Client) -> BTreeMap<String, BatchResult> {
    let batch = c.batches().create(&requests(3)).await.unwrap();
    assert!(batch.id.starts_with("msgbatch_"));
    assert_eq!(batch.processing_status, ProcessingStatus::InProgress);
    assert_eq!(batch.request_counts.processing, 3);
    assert!(batch.request_id().is_some());

    let early = c.batches().results(&batch.id).await.unwrap_err();
    assert!(matches!(early, Error::BadRequest(_)), "{early:?}");

    let ended = c
        .batches()
        .wait_until_ended(&batch.id, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(ended.request_counts.succeeded, 3);
    assert!(ended.results_url.is_some() && ended.ended_at.is_some());
    let again = c.messages().batches().retrieve(&batch.id).await.unwrap();
    assert_eq!(again.processing_status, ProcessingStatus::Ended);

    let results = c.batches().results(&batch.id).await.unwrap();
    assert!(results.request_id().is_some());
    let lines = results.collect_all().await.unwrap();
    let by_id: BTreeMap<String, BatchResult> =
        lines.into_iter().map(|l| (l.custom_id, l.result)).collect();
    assert_eq!(by_id.len(), 3);
    for (i, (id, result)) in by_id.iter().enumerate() {
        assert_eq!(id, &format!("req-{i}"));
        let BatchResult::Succeeded { message } = result else {
            panic!("{id}: {result:?}");
        };
        assert_eq!(message.text(), format!("answer {i}"));
        assert_eq!(message.usage.service_tier.as_deref(), Some("batch"));
    }
    let listed: Vec<String> = c
        .batches()
        .list_all(ListParams::limit(1))
        .map_ok(|b| b.id)
        .try_collect()
        .await
        .unwrap();
    assert!(listed.contains(&batch.id));
    let deleted = c.batches().delete(&batch.id).await.unwrap();
    assert_eq!(
        (deleted.id.as_str(), deleted.kind.as_str()),
        (batch.id.as_str(), "message_batch_deleted")
    );
    let gone = c.batches().retrieve(&batch.id).await.unwrap_err();
    assert!(matches!(gone, Error::NotFound(_)), "{gone:?}");
    by_id
}

#[tokio::test]
async fn a_batch_goes_from_creation_to_results_to_deletion() {
    let sim = sim(300).await;
    round_trip(&sim.client()).await;
}

#[tokio::test]
async fn results_stream_line_by_line() {
    let sim = sim(0).await;
    let c = sim.client();
    let batch = c.batches().create(&requests(5)).await.unwrap();
    c.batches()
        .wait_until_ended(&batch.id, Duration::from_millis(10))
        .await
        .unwrap();
    let mut results = c.batches().results(&batch.id).await.unwrap();
    let mut n = 0;
    while let Some(line) = results.next_result().await {
        assert!(matches!(
            line.unwrap().result,
            BatchResult::Succeeded { .. }
        ));
        n += 1;
    }
    assert_eq!(n, 5);
    let page = c.batches().list(&ListParams::default()).await.unwrap();
    assert_eq!(page.data[0].id, batch.id, "newest first");
}

#[tokio::test]
async fn a_canceled_batch_ends_with_canceled_items_and_can_then_be_deleted() {
    let sim = sim(5_000).await;
    let c = sim.client();
    let batch = c.batches().create(&requests(2)).await.unwrap();
    let busy = c.batches().delete(&batch.id).await.unwrap_err();
    assert!(matches!(busy, Error::BadRequest(_)), "{busy:?}");
    let canceling = c.batches().cancel(&batch.id).await.unwrap();
    assert!(
        matches!(
            canceling.processing_status,
            ProcessingStatus::Canceling | ProcessingStatus::Ended
        ),
        "{:?}",
        canceling.processing_status
    );
    assert!(canceling.cancel_initiated_at.is_some());
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        c.batches()
            .wait_until_ended(&batch.id, Duration::from_millis(50)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ended.request_counts.canceled, 2);
    let results = c
        .batches()
        .results(&batch.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(results.iter().all(|l| l.result == BatchResult::Canceled));
    c.batches().delete(&batch.id).await.unwrap();
}

#[tokio::test]
async fn bad_batch_calls_are_refused() {
    let sim = sim(0).await;
    let c = sim.client();
    let err = c.batches().create(&[]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    for id in ["", ".."] {
        assert!(matches!(
            c.batches().retrieve(id).await,
            Err(Error::InvalidArgument(_))
        ));
    }
    let err = c.batches().retrieve("msgbatch_unknown").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(sim.calls("batches").await, 1);
}
