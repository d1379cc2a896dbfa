//! [`Response`]: a decoded body with the response's status and headers (and so its request id).

use std::ops::{Deref, DerefMut};

use http::{HeaderMap, StatusCode};

use crate::error::header_str;

/// A decoded response. Derefs to the body, so `response.content` reads the message's content;
/// [`Response::request_id`] names the request for support and logs.
#[derive(Debug, Clone)]
pub struct Response<T> {
    data: T,
    status: StatusCode,
    headers: HeaderMap,
}

impl<T> Response<T> {
    pub(crate) const fn new(data: T, status: StatusCode, headers: HeaderMap) -> Self {
        Self {
            data,
            status,
            headers,
        }
    }

    /// The `request-id` header (`req_…`).
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        header_str(&self.headers, "request-id")
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The response headers (e.g. `anthropic-ratelimit-*`).
    #[must_use]
    pub const fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    #[must_use]
    pub fn into_inner(self) -> T {
        self.data
    }
}

impl<T> Deref for Response<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> DerefMut for Response<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}
