//! `GET /v1/models` and `GET /v1/models/{id}`.

use futures_util::stream::BoxStream;
use rampart_api::models::{ModelInfo, Page};

use crate::client::Client;
use crate::error::Error;
use crate::pagination::{ListParams, paginate};
use crate::request::{Call, segment};
use crate::response::Response;

/// The model catalogue of a [`Client`].
#[derive(Debug, Clone, Copy)]
pub struct Models<'c> {
    client: &'c Client,
}

impl<'c> Models<'c> {
    pub(crate) const fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// One page of models, newest first.
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout.
    pub async fn list(&self, params: &ListParams) -> Result<Response<Page<ModelInfo>>, Error> {
        self.client.json(Call::get(params.url("/v1/models"))).await
    }

    /// Every model from `params` on, fetching pages as the stream is read.
    #[must_use]
    pub fn list_all(&self, params: ListParams) -> BoxStream<'static, Result<ModelInfo, Error>> {
        paginate(self.client.clone(), "/v1/models", params)
    }

    /// One model by id or alias (an alias resolves to the model's id).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown model; [`Error::InvalidArgument`] for an empty id.
    pub async fn get(&self, id: &str) -> Result<Response<ModelInfo>, Error> {
        let path = format!("/v1/models/{}", segment("model id", id)?);
        self.client.json(Call::get(path)).await
    }
}
