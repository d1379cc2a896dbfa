//! Cursor pagination of the list endpoints (`/v1/models`, `/v1/messages/batches`): one page with
//! [`ListParams`], or every item as a stream that fetches pages as it goes.

use std::collections::VecDeque;

use futures_util::stream::{self, BoxStream, StreamExt};
use rampart_api::models::Page;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::Error;
use crate::request::{Call, encode};

/// `limit`, `before_id`, `after_id` of a list call. Lists are newest first: `after_id` pages
/// towards older items, `before_id` towards newer ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// Items per page, 1–1000 (the API's default is 20).
    pub limit: Option<u32>,
    /// Items just before (newer than) this id.
    pub before_id: Option<String>,
    /// Items just after (older than) this id.
    pub after_id: Option<String>,
}

impl ListParams {
    /// Pages of `limit` items.
    #[must_use]
    pub fn limit(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// `path` with these parameters as its query string.
    pub(crate) fn url(&self, path: &str) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(b) = &self.before_id {
            parts.push(format!("before_id={}", encode(b)));
        }
        if let Some(a) = &self.after_id {
            parts.push(format!("after_id={}", encode(a)));
        }
        if parts.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", parts.join("&"))
        }
    }

    /// The parameters of the page after `page`, if there is one: onwards in the direction these
    /// parameters go (backwards with `before_id`, as the SDKs page).
    fn next<T>(&self, page: &Page<T>) -> Option<Self> {
        if !page.has_more {
            return None;
        }
        let mut next = self.clone();
        if self.before_id.is_some() {
            next.before_id = Some(page.first_id.clone()?);
        } else {
            next.after_id = Some(page.last_id.clone()?);
        }
        Some(next)
    }
}

/// Every item of the list at `path`, fetching pages on demand.
pub(crate) fn paginate<T>(
    client: Client,
    path: &'static str,
    params: ListParams,
) -> BoxStream<'static, Result<T, Error>>
where
    T: DeserializeOwned + Send + 'static,
{
    struct State<T> {
        client: Client,
        next: Option<ListParams>,
        items: VecDeque<T>,
    }
    let state = State {
        client,
        next: Some(params),
        items: VecDeque::new(),
    };
    stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(item) = st.items.pop_front() {
                return Some((Ok(item), st));
            }
            let params = st.next.take()?;
            match st.client.json::<Page<T>>(Call::get(params.url(path))).await {
                Ok(page) => {
                    let page = page.into_inner();
                    st.next = params.next(&page);
                    st.items.extend(page.data);
                }
                // An error ends the listing (`next` is already taken).
                Err(e) => return Some((Err(e), st)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(has_more: bool) -> Page<u8> {
        Page {
            data: vec![1, 2],
            has_more,
            first_id: Some("first".into()),
            last_id: Some("last".into()),
        }
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(ListParams::default().url("/v1/models"), "/v1/models");
        let p = ListParams {
            limit: Some(5),
            before_id: None,
            after_id: Some("a b&c".into()),
        };
        assert_eq!(p.url("/v1/models"), "/v1/models?limit=5&after_id=a%20b%26c");
    }

    #[test]
    fn the_next_page_follows_the_direction_of_travel() {
        let forward = ListParams::limit(2);
        assert_eq!(
            forward.next(&page(true)).unwrap().after_id.as_deref(),
            Some("last")
        );
        assert_eq!(forward.next(&page(false)), None);
        let backward = ListParams {
            before_id: Some("x".into()),
            ..ListParams::default()
        };
        assert_eq!(
            backward.next(&page(true)).unwrap().before_id.as_deref(),
            Some("first")
        );
        let no_cursor = Page::<u8> {
            data: vec![],
            has_more: true,
            first_id: None,
            last_id: None,
        };
        assert_eq!(forward.next(&no_cursor), None);
    }
}
