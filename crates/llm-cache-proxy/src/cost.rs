//! Prices per deployment (LiteLLM's names in `litellm_params`) and the cost of a response.
//!
//! No price table is bundled: an unpriced deployment reports no cost. A hit costs nothing
//! (`x-litellm-response-cost: 0`, as LiteLLM); what it avoided is the cost of the stored
//! response at the prices of the deployment the request would have gone to.

use llm_cache::CallKind;
use llm_cache::core::params::Params;
use serde_json::Value;

/// The `litellm_params` keys read as prices (USD).
pub const PRICE_KEYS: &[&str] = &[
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_query",
    "input_cost_per_request",
];

/// A deployment's prices (USD); `None` = not priced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// Per prompt/input token.
    pub input_per_token: Option<f64>,
    /// Per completion/output token.
    pub output_per_token: Option<f64>,
    /// Per input token read from a provider's prompt cache (Anthropic, OpenAI cached tokens).
    pub cache_read_per_token: Option<f64>,
    /// Per input token written to a provider's prompt cache (Anthropic).
    pub cache_creation_per_token: Option<f64>,
    /// Per second of input audio (transcription).
    pub input_per_second: Option<f64>,
    /// Per second of output (LiteLLM's per-second models).
    pub output_per_second: Option<f64>,
    /// Per query / search unit (rerank).
    pub per_query: Option<f64>,
    /// Per request, whatever it holds.
    pub per_request: Option<f64>,
}

impl Prices {
    /// Reads the price keys of a deployment's `litellm_params`.
    ///
    /// # Errors
    /// A price that is not a non-negative number, naming the key.
    pub fn from_params(p: &Params) -> llm_cache::Result<Self> {
        let get = |k: &str| -> llm_cache::Result<Option<f64>> {
            match p.f64(k)? {
                Some(v) if v < 0.0 => Err(p.error(k, "a price must not be negative")),
                v => Ok(v),
            }
        };
        Ok(Prices {
            input_per_token: get("input_cost_per_token")?,
            output_per_token: get("output_cost_per_token")?,
            cache_read_per_token: get("cache_read_input_token_cost")?,
            cache_creation_per_token: get("cache_creation_input_token_cost")?,
            input_per_second: get("input_cost_per_second")?,
            output_per_second: get("output_cost_per_second")?,
            per_query: get("input_cost_per_query")?,
            per_request: get("input_cost_per_request")?,
        })
    }

    /// Whether any price is set.
    pub fn is_priced(&self) -> bool {
        *self != Prices::default()
    }

    /// The cost of a response (`None` when unpriced). `seconds` is the upstream call's duration,
    /// for per-second output prices.
    pub fn cost(&self, kind: CallKind, response: &Value, seconds: Option<f64>) -> Option<f64> {
        if !self.is_priced() {
            return None;
        }
        let usage = response.get("usage");
        let tok = |names: &[&str]| -> f64 {
            usage
                .and_then(|u| names.iter().find_map(|n| u.get(*n).and_then(Value::as_f64)))
                .unwrap_or(0.0)
        };
        let mut cost = self.per_request.unwrap_or(0.0);
        // OpenAI counts cached prompt tokens inside prompt_tokens; Anthropic counts them apart.
        let cached_openai = usage
            .and_then(|u| {
                u.pointer("/prompt_tokens_details/cached_tokens")
                    .or_else(|| u.pointer("/input_tokens_details/cached_tokens"))
            })
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let cache_read = tok(&["cache_read_input_tokens"]) + cached_openai;
        let cache_creation = tok(&["cache_creation_input_tokens"]);
        let input = tok(&["prompt_tokens", "input_tokens"]) - cached_openai;
        let output = tok(&["completion_tokens", "output_tokens"]);
        let input_price = self.input_per_token.unwrap_or(0.0);
        cost += input.max(0.0) * input_price;
        cost += output * self.output_per_token.unwrap_or(0.0);
        cost += cache_read * self.cache_read_per_token.unwrap_or(input_price);
        cost += cache_creation * self.cache_creation_per_token.unwrap_or(input_price);
        match kind {
            CallKind::Transcription => {
                let audio = response
                    .get("duration")
                    .and_then(Value::as_f64)
                    .or_else(|| usage.and_then(|u| u.get("seconds")).and_then(Value::as_f64));
                cost += audio.unwrap_or(0.0) * self.input_per_second.unwrap_or(0.0);
            }
            CallKind::Rerank => {
                let units = response
                    .pointer("/meta/billed_units/search_units")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0);
                cost += units * self.per_query.unwrap_or(0.0);
            }
            _ => {}
        }
        cost += seconds.unwrap_or(0.0) * self.output_per_second.unwrap_or(0.0);
        Some(cost)
    }
}

/// Formats a cost for a header (`0`, or up to 10 significant decimals, no exponent).
pub fn format_cost(cost: f64) -> String {
    if cost == 0.0 {
        return "0".to_owned();
    }
    let s = format!("{cost:.12}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prices(v: Value) -> Prices {
        Prices::from_params(&Params::new(v.as_object().unwrap().clone(), "p")).unwrap()
    }

    #[test]
    fn token_prices_and_kinds() {
        let p =
            prices(json!({"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}));
        let chat = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 50}});
        assert!((p.cost(CallKind::Chat, &chat, None).unwrap() - 0.0002).abs() < 1e-12);
        let anthropic = json!({"usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100}});
        // cache reads at the input price when no cache price is set
        assert!(
            (p.cost(CallKind::AnthropicMessages, &anthropic, None)
                .unwrap()
                - 0.00012)
                .abs()
                < 1e-12
        );
        let openai_cached = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 60}}});
        let p2 = prices(
            json!({"input_cost_per_token": 0.000001, "cache_read_input_token_cost": 0.0000005}),
        );
        assert!(
            (p2.cost(CallKind::Chat, &openai_cached, None).unwrap() - (40e-6 + 30e-6)).abs()
                < 1e-12
        );
        let whisper = prices(json!({"input_cost_per_second": 0.0001}));
        let t = json!({"text": "hi", "duration": 12.5});
        assert!((whisper.cost(CallKind::Transcription, &t, None).unwrap() - 0.00125).abs() < 1e-12);
        let rerank = prices(json!({"input_cost_per_query": 0.002}));
        let r = json!({"results": [], "meta": {"billed_units": {"search_units": 2}}});
        assert!((rerank.cost(CallKind::Rerank, &r, None).unwrap() - 0.004).abs() < 1e-12);
    }

    #[test]
    fn unpriced_is_none_and_negative_prices_are_refused() {
        assert_eq!(
            Prices::default().cost(CallKind::Chat, &json!({}), None),
            None
        );
        let err = Prices::from_params(&Params::new(
            json!({"input_cost_per_token": -1})
                .as_object()
                .unwrap()
                .clone(),
            "model_list[0].litellm_params",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("input_cost_per_token"), "{err}");
        assert_eq!(format_cost(0.0), "0");
        assert_eq!(format_cost(0.00025), "0.00025");
    }
}
