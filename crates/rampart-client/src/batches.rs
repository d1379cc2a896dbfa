//! Message batches: create, retrieve, poll until ended, list, cancel, delete, and the results as
//! a stream of JSONL lines.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::BoxStream;
use http::HeaderMap;
use rampart_api::batches::{
    BatchRequest, BatchResultLine, DeletedBatch, MessageBatch, ProcessingStatus,
};
use rampart_api::models::Page;
use rampart_api::params::MessageCreateParams;
use serde::Serialize;

use crate::body::BodyReader;
use crate::client::Client;
use crate::error::{Error, header_str};
use crate::lines::Lines;
use crate::messages::check_extra;
use crate::pagination::{ListParams, paginate};
use crate::request::{Call, Payload, segment};
use crate::response::Response;

/// The longest results line accepted (one request's whole result).
const MAX_RESULT_LINE: usize = 32 << 20;

/// The batches API of a [`Client`].
#[derive(Debug, Clone, Copy)]
pub struct Batches<'c> {
    client: &'c Client,
}

#[derive(Serialize)]
struct CreateBody<'r> {
    requests: &'r [BatchRequest<MessageCreateParams>],
}

impl<'c> Batches<'c> {
    pub(crate) const fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// Submits `requests` (each a non-streaming Messages request with a `custom_id` unique in
    /// the batch) for asynchronous processing.
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout; [`Error::InvalidArgument`]
    /// for an empty batch.
    pub async fn create(
        &self,
        requests: &[BatchRequest<MessageCreateParams>],
    ) -> Result<Response<MessageBatch>, Error> {
        if requests.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one request".into(),
            ));
        }
        for r in requests {
            check_extra(&r.params)?;
        }
        let call = Call::post("/v1/messages/batches".to_owned(), &CreateBody { requests })?;
        self.client.json(call).await
    }

    /// The batch's current state.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown batch; the API's other errors.
    pub async fn retrieve(&self, id: &str) -> Result<Response<MessageBatch>, Error> {
        self.client.json(Call::get(batch_path(id, "")?)).await
    }

    /// Retrieves the batch every `interval` until its processing has ended, and returns it.
    /// Bound the wait with `tokio::time::timeout` if needed.
    ///
    /// # Errors
    /// The first failed retrieval's error (each retrieval retries as usual).
    pub async fn wait_until_ended(
        &self,
        id: &str,
        interval: Duration,
    ) -> Result<Response<MessageBatch>, Error> {
        loop {
            let batch = self.retrieve(id).await?;
            if batch.processing_status == ProcessingStatus::Ended {
                return Ok(batch);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One page of batches, newest first.
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout.
    pub async fn list(&self, params: &ListParams) -> Result<Response<Page<MessageBatch>>, Error> {
        self.client
            .json(Call::get(params.url("/v1/messages/batches")))
            .await
    }

    /// Every batch from `params` on, fetching pages as the stream is read.
    #[must_use]
    pub fn list_all(&self, params: ListParams) -> BoxStream<'static, Result<MessageBatch, Error>> {
        paginate(self.client.clone(), "/v1/messages/batches", params)
    }

    /// Asks for the batch to stop; it moves to `canceling`, then ends.
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout.
    pub async fn cancel(&self, id: &str) -> Result<Response<MessageBatch>, Error> {
        let call = Call {
            method: http::Method::POST,
            ..Call::get(batch_path(id, "/cancel")?)
        };
        self.client.json(call).await
    }

    /// Deletes an ended batch (cancel it first if it is still running).
    ///
    /// # Errors
    /// The API's error (after retries), a connection error or timeout.
    pub async fn delete(&self, id: &str) -> Result<Response<DeletedBatch>, Error> {
        self.client.json(Call::delete(batch_path(id, "")?)).await
    }

    /// The results of an ended batch, one line per request in no particular order (match them
    /// by `custom_id`). The request goes to this client's base URL — the batch's `results_url` is
    /// not followed, so the key is never sent to another host.
    ///
    /// # Errors
    /// The API's error when the batch is unknown or has not ended yet (after retries).
    pub async fn results(&self, id: &str) -> Result<BatchResults, Error> {
        let call = Call::get(batch_path(id, "/results")?).streaming("application/binary");
        let success = self.client.execute(&call).await?;
        match success.payload {
            Payload::Body(body) => Ok(BatchResults {
                reader: BodyReader::new(body, self.client.options.timeout),
                lines: Lines::new(MAX_RESULT_LINE),
                headers: success.headers,
                ended: false,
                done: false,
            }),
            Payload::Bytes(_) => Err(Error::invalid_response(
                "expected a results stream",
                &success.headers,
            )),
        }
    }
}

fn batch_path(id: &str, rest: &str) -> Result<String, Error> {
    Ok(format!(
        "/v1/messages/batches/{}{rest}",
        segment("batch id", id)?
    ))
}

/// The results of a batch as a [`Stream`] of [`BatchResultLine`]s, read as they arrive.
pub struct BatchResults {
    reader: BodyReader,
    lines: Lines,
    headers: HeaderMap,
    /// The body has ended.
    ended: bool,
    /// Nothing more will be yielded.
    done: bool,
}

impl std::fmt::Debug for BatchResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchResults")
            .field("request_id", &self.request_id())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl BatchResults {
    /// The `request-id` response header.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        header_str(&self.headers, "request-id")
    }

    /// The next result line, or `None` at the end.
    pub async fn next_result(&mut self) -> Option<Result<BatchResultLine, Error>> {
        std::future::poll_fn(|cx| self.poll_result(cx)).await
    }

    /// Every remaining result.
    ///
    /// # Errors
    /// The first error reading or parsing the results.
    pub async fn collect_all(mut self) -> Result<Vec<BatchResultLine>, Error> {
        let mut all = Vec::new();
        while let Some(r) = self.next_result().await {
            all.push(r?);
        }
        Ok(all)
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<BatchResultLine, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }

    fn parse(&self, line: &[u8]) -> Result<BatchResultLine, Error> {
        serde_json::from_slice(line).map_err(|e| {
            Error::invalid_response(
                format!("a results line is not a batch result: {e}"),
                &self.headers,
            )
        })
    }

    /// The next line of the results exactly as the server sent it (without its line ending;
    /// blank lines skipped), or `None` at the end: for copying the results somewhere unchanged.
    pub async fn next_raw_line(&mut self) -> Option<Result<Vec<u8>, Error>> {
        std::future::poll_fn(|cx| self.poll_line(cx)).await
    }

    fn poll_result(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BatchResultLine, Error>>> {
        match ready!(self.poll_line(cx)) {
            Some(Ok(line)) => match self.parse(&line) {
                Ok(result) => Poll::Ready(Some(Ok(result))),
                Err(e) => self.fail(e),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>, Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let line = match self.lines.next_line() {
                Ok(Some(line)) => Some(line.to_vec()),
                Ok(None) if self.ended => {
                    self.done = true;
                    self.lines.take_remainder()
                }
                Ok(None) => None,
                Err(e) => {
                    let error = Error::invalid_response(
                        format!("a results line is over {} MiB", e.0 >> 20),
                        &self.headers,
                    );
                    self.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            };
            if let Some(line) = line {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Poll::Ready(Some(Ok(line)));
            }
            if self.ended {
                continue;
            }
            match ready!(self.reader.poll_chunk(cx)) {
                Some(Ok(data)) => self.lines.push(&data),
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => self.ended = true,
            }
        }
    }
}

impl Stream for BatchResults {
    type Item = Result<BatchResultLine, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_result(cx)
    }
}
