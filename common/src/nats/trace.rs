//! W3C trace context (`traceparent`), carried on every message so one trace id spans the api,
//! the workers and the results, without pulling in a tracing exporter.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// A W3C `traceparent`: version 00, a 16-byte trace id, an 8-byte parent span id, sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Traceparent {
    /// A new trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        rng.fill_bytes(&mut trace_id);
        rng.fill_bytes(&mut span_id);
        Self { trace_id, span_id }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        let mut span_id = [0u8; 8];
        rand::rng().fill_bytes(&mut span_id);
        Self {
            trace_id: self.trace_id,
            span_id,
        }
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
