"""Message Batches end to end through the official Python SDK, against the simulator and the gateway."""

from __future__ import annotations

import anthropic
import pytest
from conftest import MODEL, Target, text_of, unique, wait_until

BATCH_DEADLINE_S = 30.0


def good_item(custom_id: str, text: str) -> dict:
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": f"echo: {text}"}]},
    }


def bad_item(custom_id: str) -> dict:
    # max_tokens is required: the API validates batch params asynchronously, so this becomes an errored result.
    return {"custom_id": custom_id, "params": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}


def wait_ended(client: anthropic.Anthropic, batch_id: str):
    return wait_until(
        lambda: (b := client.messages.batches.retrieve(batch_id)).processing_status == "ended" and b,
        timeout=BATCH_DEADLINE_S,
        interval=0.25,
        what=f"batch {batch_id} to end",
    )


def test_batch_with_a_good_and_an_invalid_item_ends_with_one_success_and_one_error(client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[good_item("good", "batched hello"), bad_item("bad")])
    assert created.id.startswith("msgbatch_")
    assert created.type == "message_batch"
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 2
    assert created.results_url is None
    assert created.ended_at is None
    assert created.expires_at > created.created_at

    ended = wait_ended(client, created.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.processing, counts.canceled, counts.expired) == (1, 1, 0, 0, 0)
    assert ended.ended_at is not None
    assert ended.results_url, "an ended batch has a results_url"

    results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
    assert set(results) == {"good", "bad"}
    assert results["good"].type == "succeeded"
    assert text_of(results["good"].message) == "batched hello"
    assert results["good"].message.usage.service_tier == "batch"
    assert results["bad"].type == "errored"
    assert results["bad"].error.type == "error"
    assert results["bad"].error.error.type == "invalid_request_error"


def test_results_url_points_back_at_the_server_the_client_talks_to(client: anthropic.Anthropic, target: Target) -> None:
    created = client.messages.batches.create(requests=[good_item("u", "where are my results")])
    ended = wait_ended(client, created.id)
    # The SDKs download results from results_url exactly as given (Python and TypeScript alike).
    assert ended.results_url == f"{target.base_url}/v1/messages/batches/{created.id}/results"


def test_batch_list_contains_a_new_batch_newest_first(client: anthropic.Anthropic) -> None:
    older = client.messages.batches.create(requests=[good_item("a", "one")])
    newer = client.messages.batches.create(requests=[good_item("b", "two")])
    page = client.messages.batches.list(limit=1000)
    ids = [b.id for b in page.data]
    assert older.id in ids and newer.id in ids
    assert ids.index(newer.id) < ids.index(older.id)
    one = client.messages.batches.list(limit=1)
    assert len(one.data) == 1 and one.has_more is True


def test_cancelling_a_batch_moves_it_to_canceling_then_ended_with_canceled_items(client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[good_item(unique("c"), "x"), good_item(unique("c"), "y")])
    canceled = client.messages.batches.cancel(created.id)
    assert canceled.id == created.id
    assert canceled.processing_status in ("canceling", "ended")
    assert canceled.cancel_initiated_at is not None
    ended = wait_ended(client, created.id)
    counts = ended.request_counts
    assert counts.canceled + counts.succeeded == 2
    assert counts.canceled >= 1
    kinds = {r.result.type for r in client.messages.batches.results(created.id)}
    assert "canceled" in kinds


def test_deleting_an_ended_batch_removes_it(client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[good_item("d", "to delete")])
    wait_ended(client, created.id)
    deleted = client.messages.batches.delete(created.id)
    assert deleted.id == created.id
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)


def test_deleting_a_batch_still_in_progress_is_rejected(client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[good_item("e", "busy")])
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.batches.delete(created.id)
    assert 400 <= exc.value.status_code < 500
    client.messages.batches.cancel(created.id)


def test_retrieving_an_unknown_batch_raises_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        client.messages.batches.retrieve("msgbatch_01doesnotexist000000000")
    assert exc.value.type == "not_found_error"
