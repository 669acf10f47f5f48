//! W3C trace context (`traceparent`), carried on every message so one trace id spans the api,
//! the workers and the results.
//!
//! When spans are exported (`telemetry.otlp_endpoint`), a [`Traceparent`] is the context of a
//! real span: the one that sent the message, so that the receiver's span becomes its child.
//! Without an exporter there are no such spans, and the ids are random ones that still tie
//! the log lines of one request together.

use std::fmt;
use std::str::FromStr;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A W3C `traceparent`: version 00, a 16-byte trace id, an 8-byte parent span id, sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Traceparent {
    /// The trace that new work starts in. Within a span that is exported (an HTTP request's,
    /// honouring the caller's `traceparent`), that span's context, so the work joins the
    /// caller's trace; elsewhere a new trace with random ids.
    pub fn new_root() -> Self {
        Self::current().unwrap_or_else(|| {
            let mut rng = rand::rng();
            let mut trace_id = [0u8; 16];
            let mut span_id = [0u8; 8];
            rng.fill_bytes(&mut trace_id);
            rng.fill_bytes(&mut span_id);
            Self { trace_id, span_id }
        })
    }

    /// The context to send on a message that continues this trace: the current span's, when
    /// it is exported and belongs to this trace (so the receiver's span is its child); else a
    /// new span id in this trace.
    pub fn child(&self) -> Self {
        if let Some(current) = Self::current().filter(|c| c.trace_id == self.trace_id) {
            return current;
        }
        let mut span_id = [0u8; 8];
        rand::rng().fill_bytes(&mut span_id);
        Self {
            trace_id: self.trace_id,
            span_id,
        }
    }

    /// The context of the current span, if spans are exported and one is current.
    pub fn current() -> Option<Self> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| Self {
            trace_id: span.trace_id().to_bytes(),
            span_id: span.span_id().to_bytes(),
        })
    }

    /// Makes `span` a child of this (remote) context, so it joins this trace; call it before
    /// the span is first entered. Without an exporter, spans have no context and this does
    /// nothing.
    pub fn make_parent_of(&self, span: &tracing::Span) {
        let parent = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        // Fails only when spans are not exported or the span is disabled: nothing to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }

    /// The context a message carries in its `traceparent` header, if any and well-formed.
    pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<Self> {
        headers?
            .get(super::TRACEPARENT)
            .and_then(|value| value.as_str().parse().ok())
    }

    /// The trace id as 32 hex characters, for log fields.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-01",
            hex::encode(self.trace_id),
            hex::encode(self.span_id)
        )
    }
}

impl FromStr for Traceparent {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('-');
        let (Some("00"), Some(trace), Some(span), Some(_flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("traceparent must be 00-<trace>-<span>-<flags>");
        };
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).map_err(|_| "bad trace id")?;
        hex::decode_to_slice(span, &mut span_id).map_err(|_| "bad span id")?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err("all-zero ids are invalid");
        }
        Ok(Self { trace_id, span_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_share_the_trace() {
        let root = Traceparent::new_root();
        let text = root.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(text.parse::<Traceparent>().unwrap(), root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child, root);
        assert!("01-00-00-00".parse::<Traceparent>().is_err());
    }
}
