//! Reading a streamed response body chunk by chunk with an idle timeout: the longest wait for the
//! next piece is the client's timeout, as the SDKs' read timeout. The wait is counted from when
//! the reader starts waiting, so a consumer that is slow to ask for the next piece does not use
//! up the server's time.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::transport::Body;

/// A body read with an idle timeout.
pub(crate) struct BodyReader {
    body: Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// The timer runs for the current wait.
    waiting: bool,
}

impl BodyReader {
    pub(crate) fn new(body: Body, idle: Duration) -> Self {
        Self {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
        }
    }

    /// The next data chunk; `None` at the end; a connection error, or a timeout after `idle`
    /// with no data.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.waiting = false;
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Error::connection(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if !self.waiting {
                        self.waiting = true;
                        let deadline = Instant::now() + self.idle;
                        self.timer.as_mut().reset(deadline);
                    }
                    ready!(self.timer.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Error::Timeout {
                        after: self.idle,
                        phase: "waiting for more of the response",
                    })));
                }
            }
        }
    }
}
