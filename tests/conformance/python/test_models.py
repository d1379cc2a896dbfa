"""Models API through the official Python SDK, against the simulator and the gateway."""

from __future__ import annotations

import anthropic
import pytest
from conftest import MODEL


def test_models_list_returns_model_infos_with_pagination_fields(client: anthropic.Anthropic) -> None:
    page = client.models.list()
    assert len(page.data) >= 1
    for info in page.data:
        assert info.type == "model"
        assert info.id.startswith("claude-")
        assert info.display_name
        assert info.created_at is not None
    assert page.first_id == page.data[0].id
    assert page.last_id == page.data[-1].id
    assert any(m.id.startswith(MODEL) for m in client.models.list(limit=1000).data)


def test_models_list_honours_limit_and_pages_with_after_id(client: anthropic.Anthropic) -> None:
    everything = [m.id for m in client.models.list(limit=1000).data]
    if len(everything) < 2:
        pytest.skip("the catalogue has fewer than two models")
    first = client.models.list(limit=1)
    assert [m.id for m in first.data] == everything[:1]
    assert first.has_more is True
    # Iterating with the SDK's auto-pagination walks the whole catalogue one page at a time.
    assert [m.id for m in client.models.list(limit=1)] == everything


def test_models_retrieve_returns_the_model(client: anthropic.Anthropic) -> None:
    info = client.models.retrieve(MODEL)
    assert info.id.startswith(MODEL)  # an alias resolves to its dated id
    assert client.models.retrieve(info.id).id == info.id
    assert info.type == "model"
    assert info._request_id and info._request_id.startswith("req_")


def test_models_retrieve_of_an_unknown_model_raises_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        client.models.retrieve("claude-does-not-exist-1")
    assert exc.value.status_code == 404
    assert exc.value.type == "not_found_error"
