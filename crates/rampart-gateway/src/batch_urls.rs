//! Batch objects carry a `results_url` on the upstream's host; clients fetch results from it with
//! their Rampart key, so it must point at Rampart. Batch create/get/list/cancel responses are small
//! JSON documents: they are buffered and rewritten here (never on the Messages hot path).

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::error::ProxyError;

/// Largest batch document rewritten (a 1000-item list page is well under this).
const LIMIT: usize = 16 * 1024 * 1024;

/// Rewrite every `results_url` in a batch object or list page to `{base}/v1/messages/batches/{id}/results`.
pub async fn rewrite(resp: Response, base: &Option<String>, request_id: &str) -> Response {
    let Some(base) = base else { return resp };
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match http_body_util::Limited::new(body, LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return ProxyError::UpstreamFailed.into_response_with(request_id),
    };
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut doc) => {
            if let Some(items) = doc.get_mut("data").and_then(Value::as_array_mut) {
                for item in items {
                    fix(item, base);
                }
            }
            fix(&mut doc, base);
            serde_json::to_vec(&doc).map_or(bytes, Into::into)
        }
        Err(_) => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Ok(v) = HeaderValue::from_str(&out.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, v);
    }
    Response::from_parts(parts, Body::from(out))
}

pub(crate) fn fix(obj: &mut Value, base: &str) {
    let Some(id) = obj.get("id").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    if let Some(url) = obj.get_mut("results_url")
        && url.is_string()
        && crate::routes::valid_id_segment(&id)
    {
        *url = Value::String(format!("{base}/v1/messages/batches/{id}/results"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_urls_point_at_rampart_and_nulls_stay_null() {
        let mut page = serde_json::json!({"data": [
            {"id": "msgbatch_1", "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"},
            {"id": "msgbatch_2", "results_url": null}
        ]});
        for item in page["data"].as_array_mut().unwrap() {
            fix(item, "http://gw:1");
        }
        assert_eq!(
            page["data"][0]["results_url"],
            "http://gw:1/v1/messages/batches/msgbatch_1/results"
        );
        assert!(page["data"][1]["results_url"].is_null());
    }
}
