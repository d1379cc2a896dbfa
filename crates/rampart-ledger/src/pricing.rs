//! The price table: per-model rates as data, and the cost of a request in integer micro-dollars.
//!
//! # Units
//! Rates are kept in **micro-dollars per million tokens** (`$3.75 / MTok` is `3_750_000`), so a
//! cost is `Σ tokens × rate / 1_000_000` micro-dollars, computed in `u128` and rounded once at
//! the end: [`PriceTable::cost`] rounds to the nearest micro-dollar (half up; the error is at
//! most 0.5 µ$ per request), [`PriceTable::worst_case`] rounds up. Results saturate at
//! `u64::MAX` instead of overflowing (rates are capped at [`MAX_RATE_USD_PER_MTOK`], so the
//! `u128` sums cannot overflow either).
//!
//! # Tiers
//! Each model has five rates: base input, output, 5-minute cache write, 1-hour cache write and
//! cache read. Writes are priced by TTL from `usage.cache_creation.ephemeral_5m_input_tokens` /
//! `ephemeral_1h_input_tokens`; when the split is absent, all of `cache_creation_input_tokens`
//! is priced as 5-minute writes (see [`TokenUsage::cache_writes`]). A model may have a
//! long-context tier: when the request's total input (uncached + cache writes + cache reads)
//! exceeds its threshold, every token of the request is priced at the tier's rates, as the API
//! bills long prompts. Batch requests get [`PriceTable::batch_discount_percent`] off every rate
//! (50 % by default, the API's discount; it stacks with the cache multipliers).
//!
//! # Lookup
//! A model id resolves by exact match, then without a date suffix
//! (`claude-haiku-4-5-20251001` → `claude-haiku-4-5`), then without `-latest`. Anything else is
//! an unknown model: it is priced at the table's default (the most expensive built-in rates
//! unless configured), [`Known::Default`] says so, and the ledger counts it in
//! `rampart_pricing_unknown_model_total` ([`note_unknown_model`]).
//!
//! # Sources
//! The built-in rates are Anthropic's list prices (docs "Pricing", two stored versions, and the
//! model pages; `docs/anthropic-api.md` §7 of the shared docs). Where no official figure exists
//! the choice is written beside the entry in [`BUILTIN`]; every entry can be replaced in
//! configuration (`[pricing]`, see [`PricingConfig`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

/// An amount of money in micro-dollars (1 USD = 1 000 000).
pub type MicroUsd = u64;

/// The highest rate accepted from configuration, in USD per million tokens.
pub const MAX_RATE_USD_PER_MTOK: f64 = 1_000_000.0;
const MAX_RATE: u64 = 1_000_000_000_000; // MAX_RATE_USD_PER_MTOK in µ$ per MTok
const PER_MTOK: u128 = 1_000_000;

/// The five per-token rates of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Base (uncached) input.
    pub input: u64,
    /// Output.
    pub output: u64,
    /// Cache write with the default 5-minute TTL (list price: 1.25 × input).
    pub cache_write_5m: u64,
    /// Cache write with the 1-hour TTL (list price: 2 × input).
    pub cache_write_1h: u64,
    /// Cache read (list price: 0.1 × input).
    pub cache_read: u64,
}

impl Rates {
    /// Rates from input and output alone, the cache rates derived with the API's multipliers
    /// (5-minute write 1.25×, 1-hour write 2×, read 0.1× of input).
    #[must_use]
    pub const fn from_input_output(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            cache_write_5m: input / 4 * 5 + (input % 4) * 5 / 4,
            cache_write_1h: input.saturating_mul(2),
            cache_read: input / 10,
        }
    }

    /// The highest rate any input token can be billed at: a prompt may be written to the cache
    /// in full, and a cache write costs more than base input.
    #[must_use]
    pub fn max_input(&self) -> u64 {
        self.input
            .max(self.cache_write_5m)
            .max(self.cache_write_1h)
            .max(self.cache_read)
    }

    /// Each rate the higher of the two.
    fn max(&self, other: &Self) -> Self {
        Self {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_write_5m: self.cache_write_5m.max(other.cache_write_5m),
            cache_write_1h: self.cache_write_1h.max(other.cache_write_1h),
            cache_read: self.cache_read.max(other.cache_read),
        }
    }

    fn all(&self) -> [u64; 5] {
        [
            self.input,
            self.output,
            self.cache_write_5m,
            self.cache_write_1h,
            self.cache_read,
        ]
    }
}

/// A long-context tier: above `above_input_tokens` of total input, the whole request is billed at
/// `rates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongContext {
    /// Total input (uncached + cache writes + cache reads) above which the tier applies.
    pub above_input_tokens: u64,
    /// The tier's rates.
    pub rates: Rates,
}

/// The prices of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Rates for ordinary prompts.
    pub rates: Rates,
    /// Rates for long prompts, when the model has such a tier.
    pub long_context: Option<LongContext>,
}

impl Prices {
    /// The rates that apply to a request with `total_input` tokens of input.
    #[must_use]
    pub fn rates_for(&self, total_input: u64) -> &Rates {
        match &self.long_context {
            Some(tier) if total_input > tier.above_input_tokens => &tier.rates,
            _ => &self.rates,
        }
    }
}

/// Whether a model was found in the table or priced at the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The model (or its alias) is in the table.
    Listed,
    /// Unknown model: priced at the table's default.
    Default,
}

/// Token counts of one request, as reported in the API's `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// `input_tokens`: uncached input after the last cache breakpoint.
    pub input_tokens: u64,
    /// `output_tokens`.
    pub output_tokens: u64,
    /// `cache_creation_input_tokens`: all cache writes.
    pub cache_creation_input_tokens: u64,
    /// `cache_read_input_tokens`.
    pub cache_read_input_tokens: u64,
    /// `cache_creation.ephemeral_5m_input_tokens`, when reported.
    pub cache_creation_5m: Option<u64>,
    /// `cache_creation.ephemeral_1h_input_tokens`, when reported.
    pub cache_creation_1h: Option<u64>,
}

impl TokenUsage {
    /// Cache writes as `(5-minute, 1-hour)` tokens.
    ///
    /// The 1-hour count is the reported one (0 when absent). The 5-minute count is the reported
    /// one, raised to whatever part of `cache_creation_input_tokens` the split does not explain:
    /// without a split every write is a 5-minute write (the API's default TTL), and an
    /// inconsistent report is never priced below either of its two views.
    #[must_use]
    pub fn cache_writes(&self) -> (u64, u64) {
        let one_hour = self.cache_creation_1h.unwrap_or(0);
        let five_min = self
            .cache_creation_5m
            .unwrap_or(0)
            .max(self.cache_creation_input_tokens.saturating_sub(one_hour));
        (five_min, one_hour)
    }

    /// Input that counts towards input-token rate limits: uncached input and cache writes.
    /// Cache reads do not, as with Anthropic's own limits (cache hits are not deducted).
    #[must_use]
    pub fn rate_limited_input(&self) -> u64 {
        let (w5, w1) = self.cache_writes();
        self.input_tokens.saturating_add(w5).saturating_add(w1)
    }

    /// Total input: uncached + cache writes + cache reads (what a long-context tier looks at).
    #[must_use]
    pub fn total_input(&self) -> u64 {
        let (w5, w1) = self.cache_writes();
        self.input_tokens
            .saturating_add(w5)
            .saturating_add(w1)
            .saturating_add(self.cache_read_input_tokens)
    }
}

/// The price table.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Hashed with foldhash rather than SipHash: the table is built from configuration and
    /// never grows from a request, so a chosen model name can only miss, not crowd a bucket.
    models: HashMap<String, Prices, foldhash::fast::RandomState>,
    default: Prices,
    batch_discount_percent: u8,
}

/// A built-in entry: ids, then base input, 5m write, 1h write, cache read, output in USD per
/// million tokens × 1000 (so `$3.75` is `3_750`), and an optional long-context tier.
type Builtin = (&'static [&'static str], [u64; 5], Option<(u64, [u64; 5])>);

/// The built-in list prices (USD per MTok × 1000: input, 5m write, 1h write, read, output).
const BUILTIN: &[Builtin] = &[
    // Official table: Fable 5.1 and Mythos 5.1 (cache read footnoted at $0.25).
    (
        &["claude-fable-5-1", "claude-mythos-5-1"],
        [10_000, 12_500, 20_000, 250, 50_000],
        None,
    ),
    // No published figure for the 5.2 releases: priced as 5.1.
    (
        &["claude-fable-5-2", "claude-mythos-5-2"],
        [10_000, 12_500, 20_000, 250, 50_000],
        None,
    ),
    // Official table: Fable 5 and Mythos 5.
    (
        &["claude-fable-5", "claude-mythos-5"],
        [10_000, 12_500, 20_000, 1_000, 50_000],
        None,
    ),
    // No published figure for Mythos Preview: priced as Mythos 5.
    (
        &["claude-mythos-preview"],
        [10_000, 12_500, 20_000, 1_000, 50_000],
        None,
    ),
    // Official table: Opus 5, 4.8, 4.7, 4.6, 4.5.
    (
        &[
            "claude-opus-5",
            "claude-opus-4-8",
            "claude-opus-4-7",
            "claude-opus-4-6",
            "claude-opus-4-5",
        ],
        [5_000, 6_250, 10_000, 500, 25_000],
        None,
    ),
    // Official table: Opus 4.1, 4 (retired on the API), Opus 3.
    (
        &[
            "claude-opus-4-1",
            "claude-opus-4-0",
            "claude-opus-4",
            "claude-3-opus",
        ],
        [15_000, 18_750, 30_000, 1_500, 75_000],
        None,
    ),
    // Official table: Sonnet 4.6, 4.5, 4, 3.7.
    (
        &[
            "claude-sonnet-4-6",
            "claude-sonnet-4-5",
            "claude-sonnet-4-0",
            "claude-sonnet-4",
            "claude-3-7-sonnet",
        ],
        [3_000, 3_750, 6_000, 300, 15_000],
        None,
    ),
    // Official table: Haiku 4.5.
    (
        &["claude-haiku-4-5"],
        [1_000, 1_250, 2_000, 100, 5_000],
        None,
    ),
    // Official table: Haiku 3.5.
    (&["claude-3-5-haiku"], [800, 1_000, 1_600, 80, 4_000], None),
    // Official table: Haiku 3.
    (&["claude-3-haiku"], [250, 300, 500, 30, 1_250], None),
    // Official input/output ($4 / $20, model-comparison table); cache rates by the standard
    // multipliers.
    (
        &["claude-opus-5-5"],
        [4_000, 5_000, 8_000, 400, 20_000],
        None,
    ),
    // Official input/output ($2 / $10); writes $2.50 / $4 as reported by third parties (equal to
    // the standard multipliers), read 0.1×.
    (
        &["claude-sonnet-5-5"],
        [2_000, 2_500, 4_000, 200, 10_000],
        None,
    ),
    // No official figure for Sonnet 5: the third-party "Sonnet 5.x" figures ($2 / $10).
    (
        &["claude-sonnet-5"],
        [2_000, 2_500, 4_000, 200, 10_000],
        None,
    ),
    // Official "from $0.10 / $0.50, priced by prompt length"; the long-prompt tier ($0.50 /
    // $2.50 above 100k prompt tokens) is a third-party figure. Cache rates by the multipliers.
    (
        &["claude-haiku-5-5"],
        [100, 125, 200, 10, 500],
        Some((100_000, [500, 625, 1_000, 50, 2_500])),
    ),
];

/// The built-in price for unknown models: the most expensive built-in rates (Opus 4.1), so a
/// budget errs on the safe side.
const BUILTIN_DEFAULT: [u64; 5] = [15_000, 18_750, 30_000, 1_500, 75_000];

/// USD-per-MTok × 1000 → µ$ per MTok.
const fn milli_rates(r: [u64; 5]) -> Rates {
    Rates {
        input: r[0] * 1_000,
        cache_write_5m: r[1] * 1_000,
        cache_write_1h: r[2] * 1_000,
        cache_read: r[3] * 1_000,
        output: r[4] * 1_000,
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The table shipped with Rampart: current list prices, batch discount 50 %, unknown models
    /// at the most expensive built-in rates.
    #[must_use]
    pub fn builtin() -> Self {
        let mut models = HashMap::default();
        for (ids, rates, long) in BUILTIN {
            let prices = Prices {
                rates: milli_rates(*rates),
                long_context: long.map(|(above, r)| LongContext {
                    above_input_tokens: above,
                    rates: milli_rates(r),
                }),
            };
            for id in *ids {
                models.insert((*id).to_owned(), prices);
            }
        }
        Self {
            models,
            default: Prices {
                rates: milli_rates(BUILTIN_DEFAULT),
                long_context: None,
            },
            batch_discount_percent: 50,
        }
    }

    /// The built-in table with the configuration applied: first `config.file` (when set), then
    /// the inline settings; a model named there replaces its built-in entry.
    ///
    /// # Errors
    /// Every problem found (unreadable file, unknown field, a rate that is negative, not finite
    /// or above [`MAX_RATE_USD_PER_MTOK`], a discount above 100), each naming its setting.
    pub fn from_config(config: &PricingConfig) -> Result<Self, Vec<String>> {
        let mut table = Self::builtin();
        let mut problems = Vec::new();
        if let Some(path) = &config.file {
            match read_file(path) {
                Ok(file) => table.apply(&file, &format!("{}:", path.display()), &mut problems),
                Err(e) => problems.push(e),
            }
        }
        table.apply(&config.overrides, "pricing.", &mut problems);
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    /// Price the names routing serves as other models: each `(name, models)` is a routing alias
    /// and the model it names, or the `auto` model and the models it chooses from. A name is
    /// priced at its one model's prices, or at the dearest of several (each rate the highest of
    /// theirs, long-context tiers included, so no usage of any of them costs more), so a request
    /// that names it is reserved and, when its usage cannot be read, estimated at what it will
    /// be served as rather than at the unknown-model default. A name the table already prices
    /// (an alias named like a listed model) keeps its price, and so does one none of whose models
    /// is listed.
    #[must_use]
    pub fn with_routing_names<'a>(
        mut self,
        names: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Self {
        for (name, models) in names {
            if self.find(name).is_some() {
                continue;
            }
            let listed: Vec<Prices> = models
                .iter()
                .filter_map(|m| self.find(m))
                .copied()
                .collect();
            let priced = match listed.as_slice() {
                [] => continue,
                [one] => *one,
                several => Prices {
                    rates: several
                        .iter()
                        .flat_map(|p| [Some(p.rates), p.long_context.map(|l| l.rates)])
                        .flatten()
                        .fold(Rates::from_input_output(0, 0), |a, b| a.max(&b)),
                    long_context: None,
                },
            };
            self.models.insert(name.to_owned(), priced);
        }
        self
    }

    fn apply(&mut self, o: &PricingOverrides, at: &str, problems: &mut Vec<String>) {
        if let Some(pct) = o.batch_discount_percent {
            if pct > 100 {
                problems.push(format!(
                    "{at}batch_discount_percent: {pct} is above 100 (a percentage)"
                ));
            } else {
                self.batch_discount_percent = pct;
            }
        }
        if let Some(spec) = &o.default
            && let Some(p) = spec.prices(&format!("{at}default"), problems)
        {
            self.default = p;
        }
        for (id, spec) in &o.models {
            if id.is_empty() {
                problems.push(format!("{at}models: a model id is empty"));
                continue;
            }
            if let Some(p) = spec.prices(&format!("{at}models.\"{id}\""), problems) {
                self.models.insert(id.clone(), p);
            }
        }
    }

    /// The batch discount in percent (50 by default).
    #[must_use]
    pub fn batch_discount_percent(&self) -> u8 {
        self.batch_discount_percent
    }

    /// The prices of `model` (id, dated id or alias), or the default when it is unknown.
    ///
    /// Pure: it raises no metric. Whoever records the request's cost once (the ledger) calls
    /// [`note_unknown_model`] for [`Known::Default`].
    #[must_use]
    pub fn lookup(&self, model: &str) -> (Prices, Known) {
        match self.find(model) {
            Some(p) => (*p, Known::Listed),
            None => (self.default, Known::Default),
        }
    }

    fn find(&self, model: &str) -> Option<&Prices> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        if let Some(alias) = undated(model)
            && let Some(p) = self.models.get(alias)
        {
            return Some(p);
        }
        model
            .strip_suffix("-latest")
            .and_then(|alias| self.models.get(alias))
    }

    /// What `usage` costs on `model`, in micro-dollars, rounded to the nearest micro-dollar;
    /// `batch` applies the batch discount.
    #[must_use]
    pub fn cost(&self, model: &str, usage: &TokenUsage, batch: bool) -> MicroUsd {
        let (prices, _) = self.lookup(model);
        self.cost_at(&prices, usage, batch)
    }

    /// [`PriceTable::cost`] with prices already looked up.
    #[must_use]
    pub fn cost_at(&self, prices: &Prices, usage: &TokenUsage, batch: bool) -> MicroUsd {
        let rates = prices.rates_for(usage.total_input());
        let (w5, w1) = usage.cache_writes();
        let sum = [
            (usage.input_tokens, rates.input),
            (usage.output_tokens, rates.output),
            (w5, rates.cache_write_5m),
            (w1, rates.cache_write_1h),
            (usage.cache_read_input_tokens, rates.cache_read),
        ]
        .iter()
        .fold(0u128, |acc, &(tokens, rate)| {
            acc.saturating_add(u128::from(tokens) * u128::from(rate))
        });
        self.to_micro(sum, batch, Rounding::Nearest)
    }

    /// The most a request to `model` can cost, given an estimate of its input tokens and its
    /// `max_tokens`, in micro-dollars rounded up: what a budget reserves at admission.
    ///
    /// Every input token is priced at the highest input-side rate ([`Rates::max_input`]: a
    /// prompt can be written to the 1-hour cache in full, which costs 2× base input, more than
    /// base input, a 5-minute write or a read), and `max_output_tokens` at the output rate. The
    /// long-context tier applies when the estimate is above its threshold. So for every usage
    /// whose total input is at most `input_tokens_estimate` and whose output is at most
    /// `max_output_tokens`, `cost ≤ worst_case` (a property test checks it); the bound is as
    /// good as the input estimate.
    #[must_use]
    pub fn worst_case(
        &self,
        model: &str,
        input_tokens_estimate: u64,
        max_output_tokens: u64,
        batch: bool,
    ) -> MicroUsd {
        let (prices, _) = self.lookup(model);
        self.worst_case_at(&prices, input_tokens_estimate, max_output_tokens, batch)
    }

    /// [`PriceTable::worst_case`] with prices already looked up.
    #[must_use]
    pub fn worst_case_at(
        &self,
        prices: &Prices,
        input_tokens_estimate: u64,
        max_output_tokens: u64,
        batch: bool,
    ) -> MicroUsd {
        let rates = prices.rates_for(input_tokens_estimate);
        let sum = (u128::from(input_tokens_estimate) * u128::from(rates.max_input()))
            .saturating_add(u128::from(max_output_tokens) * u128::from(rates.output));
        self.to_micro(sum, batch, Rounding::Up)
    }

    /// `sum` (tokens × µ$ per MTok) in micro-dollars, after the batch discount.
    fn to_micro(&self, sum: u128, batch: bool, rounding: Rounding) -> MicroUsd {
        let pay = if batch {
            u128::from(100 - self.batch_discount_percent.min(100))
        } else {
            100
        };
        let num = sum.saturating_mul(pay);
        let den = PER_MTOK * 100;
        let micro = match rounding {
            Rounding::Nearest => num / den + u128::from(num % den >= den / 2),
            Rounding::Up => num.div_ceil(den),
        };
        u64::try_from(micro).unwrap_or(u64::MAX)
    }
}

#[derive(Clone, Copy)]
enum Rounding {
    Nearest,
    Up,
}

/// `micro` micro-dollars as dollars with six decimal places (`1234567` → `"1.234567"`).
#[must_use]
pub fn usd(micro: MicroUsd) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Signed micro-dollars as dollars with six places (`-0.000250` for −250).
#[must_use]
pub fn signed_usd(micro: i64) -> String {
    let abs = usd(micro.unsigned_abs());
    if micro < 0 { format!("-{abs}") } else { abs }
}

/// `claude-haiku-4-5-20251001` → `claude-haiku-4-5`.
fn undated(model: &str) -> Option<&str> {
    let (alias, date) = model.rsplit_once('-')?;
    (date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit())).then_some(alias)
}

/// Count a request priced at the default because its model is unknown
/// (`rampart_pricing_unknown_model_total`) and warn once per model name (for the first 100
/// names; the name is cut to 100 characters).
pub fn note_unknown_model(model: &str) {
    metrics::counter!("rampart_pricing_unknown_model_total").increment(1);
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let shown: String = model.chars().take(100).collect();
    let first = SEEN.lock().is_ok_and(|mut seen| {
        let seen = seen.get_or_insert_with(HashSet::new);
        seen.len() < 100 && seen.insert(shown.clone())
    });
    if first {
        tracing::warn!(
            target: "rampart::pricing",
            model = %shown,
            "no price for this model: priced at the default (set [pricing.models] to price it)"
        );
    }
}

/// `[pricing]` in the configuration: overrides of the built-in table, inline or from a file.
///
/// ```toml
/// [pricing]
/// file = "/etc/rampart/prices.toml"   # optional, same keys as this section (without `file`)
/// batch_discount_percent = 50
///
/// [pricing.default]                   # unknown models (built in: the most expensive rates)
/// input = 15.0
/// output = 75.0
///
/// [pricing.models."claude-sonnet-4-6"] # USD per million tokens
/// input = 3.0
/// output = 15.0
/// cache_write_5m = 3.75               # optional: 1.25 × input
/// cache_write_1h = 6.0                # optional: 2 × input
/// cache_read = 0.30                   # optional: 0.1 × input
/// # long_context = { above_input_tokens = 200000, input = 6.0, output = 22.5 }
/// ```
///
/// A model entry replaces the built-in one for that id and its dated ids.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "PricingSection")]
pub struct PricingConfig {
    /// A TOML file with the same keys, applied before the inline ones.
    pub file: Option<PathBuf>,
    /// The inline overrides.
    pub overrides: PricingOverrides,
}

/// `[pricing]` as written, its keys side by side. (With `#[serde(flatten)]` the overrides'
/// errors would lose their path, e.g. which model has an unknown field.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PricingSection {
    file: Option<PathBuf>,
    batch_discount_percent: Option<u8>,
    default: Option<PriceSpec>,
    models: BTreeMap<String, PriceSpec>,
}

impl From<PricingSection> for PricingConfig {
    fn from(s: PricingSection) -> Self {
        Self {
            file: s.file,
            overrides: PricingOverrides {
                batch_discount_percent: s.batch_discount_percent,
                default: s.default,
                models: s.models,
            },
        }
    }
}

/// The keys of `[pricing]` (and of a pricing file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingOverrides {
    /// Percent off every rate for batch requests (0–100). Built in: 50.
    pub batch_discount_percent: Option<u8>,
    /// The price of unknown models.
    pub default: Option<PriceSpec>,
    /// Prices by model id (or alias).
    pub models: BTreeMap<String, PriceSpec>,
}

/// One model's prices in USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// Base input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// 5-minute cache write; default 1.25 × input.
    pub cache_write_5m: Option<f64>,
    /// 1-hour cache write; default 2 × input.
    pub cache_write_1h: Option<f64>,
    /// Cache read; default 0.1 × input.
    pub cache_read: Option<f64>,
    /// A long-context tier.
    pub long_context: Option<LongContextSpec>,
}

/// A long-context tier in USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextSpec {
    /// Total input above which the tier applies.
    pub above_input_tokens: u64,
    /// Base input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// 5-minute cache write; default 1.25 × input.
    pub cache_write_5m: Option<f64>,
    /// 1-hour cache write; default 2 × input.
    pub cache_write_1h: Option<f64>,
    /// Cache read; default 0.1 × input.
    pub cache_read: Option<f64>,
}

/// USD per MTok → µ$ per MTok, or the problem.
fn usd_rate(v: f64, at: &str) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=MAX_RATE_USD_PER_MTOK).contains(&v) {
        return Err(format!(
            "{at}: {v} is not a price in USD per million tokens (0 to {MAX_RATE_USD_PER_MTOK})"
        ));
    }
    // In range, so the cast is exact up to the rounding to a whole micro-dollar.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micro = (v * 1_000_000.0).round() as u64;
    Ok(micro.min(MAX_RATE))
}

fn rates(
    at: &str,
    input: f64,
    output: f64,
    cache: [Option<f64>; 3],
    problems: &mut Vec<String>,
) -> Option<Rates> {
    let mut bad = false;
    let mut get = |v: f64, field: &str| {
        usd_rate(v, &format!("{at}.{field}")).unwrap_or_else(|e| {
            problems.push(e);
            bad = true;
            0
        })
    };
    let input = get(input, "input");
    let output = get(output, "output");
    let derived = Rates::from_input_output(input, output);
    let w5 = cache[0].map_or(derived.cache_write_5m, |v| get(v, "cache_write_5m"));
    let w1 = cache[1].map_or(derived.cache_write_1h, |v| get(v, "cache_write_1h"));
    let read = cache[2].map_or(derived.cache_read, |v| get(v, "cache_read"));
    let r = Rates {
        input,
        output,
        cache_write_5m: w5.min(MAX_RATE),
        cache_write_1h: w1.min(MAX_RATE),
        cache_read: read.min(MAX_RATE),
    };
    (!bad && r.all().iter().all(|&x| x <= MAX_RATE)).then_some(r)
}

impl PriceSpec {
    fn prices(&self, at: &str, problems: &mut Vec<String>) -> Option<Prices> {
        let cache = [self.cache_write_5m, self.cache_write_1h, self.cache_read];
        let base = rates(at, self.input, self.output, cache, problems);
        let long = match &self.long_context {
            None => Some(None),
            Some(l) => {
                let cache = [l.cache_write_5m, l.cache_write_1h, l.cache_read];
                rates(
                    &format!("{at}.long_context"),
                    l.input,
                    l.output,
                    cache,
                    problems,
                )
                .map(|rates| {
                    Some(LongContext {
                        above_input_tokens: l.above_input_tokens,
                        rates,
                    })
                })
            }
        };
        let (base, long) = (base?, long?);
        if let Some(tier) = &long
            && tier.rates.all().iter().zip(base.all()).any(|(l, b)| *l < b)
        {
            problems.push(format!(
                "{at}.long_context: a long-context rate is below the model's base rate"
            ));
            return None;
        }
        Some(Prices {
            rates: base,
            long_context: long,
        })
    }
}

/// The pricing file's overrides. A problem names the file, the line and column and what was
/// expected, never the file's text (the path may name any file: see [`crate::toml_text`]).
fn read_file(path: &Path) -> Result<PricingOverrides, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("pricing.file: cannot read {}: {e}", path.display()))?;
    toml::from_str::<toml::Table>(&text).map_err(|e| {
        format!(
            "pricing.file {}: not valid TOML: {}",
            path.display(),
            crate::toml_text::describe(&e, &text)
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "pricing.file {}: {} (further problems in the file are reported once this one is fixed)",
            path.display(),
            crate::toml_text::describe(&e, &text)
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    const MTOK: u64 = 1_000_000;

    fn usage(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
            ..TokenUsage::default()
        }
    }

    #[test]
    fn every_model_the_simulator_serves_has_a_price_by_id_and_alias() {
        let table = PriceTable::builtin();
        for m in rampart_sim::default_catalogue() {
            assert_eq!(table.lookup(&m.id).1, Known::Listed, "{}", m.id);
            if let Some(alias) = undated(&m.id) {
                assert_eq!(table.lookup(alias).1, Known::Listed, "{alias}");
            }
        }
        for id in [
            "claude-opus-4-5-20251101",
            "claude-opus-4-5",
            "claude-haiku-4-5-20251001",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-20250514",
            "claude-sonnet-4-20250514",
            "claude-3-haiku-20240307",
            "claude-3-5-haiku-20241022",
            "claude-3-7-sonnet-20250219",
            "claude-3-7-sonnet-latest",
            "claude-opus-4-1-20250805",
        ] {
            assert_eq!(table.lookup(id).1, Known::Listed, "{id}");
        }
    }

    #[test]
    fn routing_names_are_priced_as_the_models_they_are_served_as() {
        let models = |m: &[&str]| m.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
        let (fast, auto, nowhere, shadow) = (
            models(&["claude-haiku-4-5"]),
            models(&["claude-haiku-4-5", "claude-sonnet-4-6", "claude-haiku-5-5"]),
            models(&["claude-nope-1"]),
            models(&["claude-haiku-4-5"]),
        );
        let t = PriceTable::builtin().with_routing_names([
            ("fast", fast.as_slice()),
            ("auto", auto.as_slice()),
            ("nowhere", nowhere.as_slice()),
            ("claude-sonnet-4-6", shadow.as_slice()),
        ]);
        // An alias: its model's prices exactly.
        assert_eq!(t.lookup("fast"), t.lookup("claude-haiku-4-5"));
        // Several models: every rate the dearest of them, long-context tiers included.
        let (auto, known) = t.lookup("auto");
        assert_eq!(known, Known::Listed);
        assert_eq!(auto.long_context, None);
        let candidates = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-haiku-5-5"];
        let every = candidates.iter().flat_map(|m| {
            let p = t.lookup(m).0;
            [Some(p.rates), p.long_context.map(|l| l.rates)]
        });
        for r in every.flatten() {
            for (have, of) in auto.rates.all().into_iter().zip(r.all()) {
                assert!(have >= of, "{:?} / {r:?}", auto.rates);
            }
        }
        assert_eq!(
            auto.rates.output,
            t.lookup("claude-sonnet-4-6").0.rates.output
        );
        // Nothing listed behind it, or a listed model's own name: as before.
        assert_eq!(t.lookup("nowhere").1, Known::Default);
        assert_eq!(
            t.lookup("claude-sonnet-4-6"),
            PriceTable::builtin().lookup("claude-sonnet-4-6")
        );
    }

    #[test]
    fn list_prices_match_the_published_table() {
        let t = PriceTable::builtin();
        // Sonnet 4.6: $3 in, $15 out per MTok.
        assert_eq!(
            t.cost("claude-sonnet-4-6", &usage(MTOK, 0), false),
            3_000_000
        );
        assert_eq!(
            t.cost("claude-sonnet-4-6", &usage(0, MTOK), false),
            15_000_000
        );
        // Haiku 3: $0.30 5m write, $0.50 1h write, $0.03 read.
        let (p, _) = t.lookup("claude-3-haiku-20240307");
        assert_eq!(p.rates.cache_write_5m, 300_000);
        assert_eq!(p.rates.cache_write_1h, 500_000);
        assert_eq!(p.rates.cache_read, 30_000);
        // Fable 5.1's footnoted read price.
        assert_eq!(t.lookup("claude-fable-5-1").0.rates.cache_read, 250_000);
        assert_eq!(t.lookup("claude-opus-4-8").0.rates.output, 25_000_000);
    }

    /// Usage with uncached input, output, both cache-write tiers and cache reads.
    fn every_tier() -> TokenUsage {
        TokenUsage {
            input_tokens: 1000,
            output_tokens: 500,
            cache_creation_input_tokens: 3000,
            cache_read_input_tokens: 10_000,
            cache_creation_5m: Some(1000),
            cache_creation_1h: Some(2000),
        }
    }

    #[test]
    fn rate_limited_input_counts_uncached_input_and_cache_writes_not_reads() {
        let u = every_tier();
        assert_eq!(u.rate_limited_input(), 4000);
        assert_eq!(u.total_input(), 14_000);
    }

    #[test]
    fn cache_tiers_are_priced_separately() {
        let t = PriceTable::builtin();
        let u = every_tier();
        // Sonnet 4.6: 1000×3 + 500×15 + 1000×3.75 + 2000×6 + 10000×0.30 µ$.
        assert_eq!(
            t.cost("claude-sonnet-4-6", &u, false),
            3000 + 7500 + 3750 + 12_000 + 3000
        );
        // Without the split, every write is a 5-minute write.
        let no_split = TokenUsage {
            cache_creation_5m: None,
            cache_creation_1h: None,
            ..u
        };
        assert_eq!(
            t.cost("claude-sonnet-4-6", &no_split, false),
            3000 + 7500 + 3000 * 3750 / 1000 + 3000
        );
        // Only the 1-hour part reported: the rest is 5-minute.
        let only_1h = TokenUsage {
            cache_creation_5m: None,
            ..u
        };
        assert_eq!(only_1h.cache_writes(), (1000, 2000));
    }

    #[test]
    fn batch_requests_pay_half() {
        let t = PriceTable::builtin();
        let u = usage(2 * MTOK, MTOK);
        assert_eq!(
            t.cost("claude-opus-4-6", &u, true),
            10_000_000 / 2 + 25_000_000 / 2
        );
        assert_eq!(
            t.cost("claude-opus-4-6", &u, true) * 2,
            t.cost("claude-opus-4-6", &u, false)
        );
    }

    #[test]
    fn costs_round_to_the_nearest_micro_dollar_and_worst_cases_round_up() {
        let t = PriceTable::builtin();
        // Haiku 3 read: 0.03 µ$ a token. 16 tokens = 0.48 µ$ → 0; 17 = 0.51 → 1.
        let read = |n| TokenUsage {
            cache_read_input_tokens: n,
            ..TokenUsage::default()
        };
        assert_eq!(t.cost("claude-3-haiku", &read(16), false), 0);
        assert_eq!(t.cost("claude-3-haiku", &read(17), false), 1);
        // One input token of Haiku 3 at the 1h write rate: 0.5 µ$ → 1.
        assert_eq!(t.worst_case("claude-3-haiku", 1, 0, false), 1);
    }

    #[test]
    fn worst_case_prices_input_as_a_full_one_hour_cache_write() {
        let t = PriceTable::builtin();
        // Sonnet 4.6: 1000 in at $6 (1h write) + 4096 out at $15.
        assert_eq!(
            t.worst_case("claude-sonnet-4-6", 1000, 4096, false),
            6000 + 4096 * 15
        );
        assert_eq!(
            t.worst_case("claude-sonnet-4-6", 1000, 4096, true),
            (6000 + 4096 * 15) / 2
        );
    }

    #[test]
    fn long_prompts_use_the_long_context_tier() {
        let t = PriceTable::builtin();
        assert_eq!(
            t.cost("claude-haiku-5-5", &usage(100_000, 0), false),
            10_000
        );
        assert_eq!(
            t.cost("claude-haiku-5-5", &usage(100_001, 0), false),
            50_001
        );
        // Cache reads count toward the threshold.
        let u = TokenUsage {
            input_tokens: 50_000,
            cache_read_input_tokens: 60_000,
            ..TokenUsage::default()
        };
        assert_eq!(t.cost("claude-haiku-5-5", &u, false), 25_000 + 3_000);
    }

    #[test]
    fn dollars_are_shown_with_six_places() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1_234_567), "1.234567");
        assert_eq!(usd(42), "0.000042");
        assert_eq!(usd(u64::MAX), "18446744073709.551615");
    }

    #[test]
    fn unknown_models_use_the_default() {
        let t = PriceTable::builtin();
        let (p, known) = t.lookup("gpt-5");
        assert_eq!(known, Known::Default);
        assert_eq!(p.rates.output, 75_000_000);
        note_unknown_model("gpt-5");
    }

    #[test]
    fn configuration_overrides_models_the_default_and_the_discount() {
        let cfg: PricingConfig = toml::from_str(
            r#"
            batch_discount_percent = 40
            [default]
            input = 1
            output = 2
            [models."claude-sonnet-4-6"]
            input = 2.5
            output = 12.5
            cache_read = 0.2
            [models."my-fine-tune"]
            input = 0.3
            output = 0.6
            long_context = { above_input_tokens = 10, input = 1, output = 2 }
            "#,
        )
        .unwrap();
        let t = PriceTable::from_config(&cfg).unwrap();
        assert_eq!(t.batch_discount_percent(), 40);
        let (p, known) = t.lookup("claude-sonnet-4-6-20260217");
        assert_eq!(known, Known::Listed);
        assert_eq!(
            p.rates,
            Rates {
                input: 2_500_000,
                output: 12_500_000,
                cache_write_5m: 3_125_000,
                cache_write_1h: 5_000_000,
                cache_read: 200_000,
            }
        );
        assert_eq!(t.lookup("unknown").0.rates.output, 2_000_000);
        assert_eq!(t.cost("my-fine-tune", &usage(11, 0), false), 11);
        assert_eq!(t.cost("my-fine-tune", &usage(0, MTOK), true), 360_000);
        // Untouched entries keep their list price.
        assert_eq!(t.lookup("claude-opus-4-6").0.rates.input, 5_000_000);
    }

    #[test]
    fn bad_configuration_reports_every_problem() {
        let cfg: PricingConfig = toml::from_str(
            r#"
            batch_discount_percent = 120
            file = "/nonexistent/prices.toml"
            [models."a"]
            input = -1
            output = 1e300
            [models."b"]
            input = 1
            output = 1
            cache_read = nan
            "#,
        )
        .unwrap();
        let problems = PriceTable::from_config(&cfg).unwrap_err();
        let all = problems.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        for needle in [
            "pricing.file: cannot read /nonexistent/prices.toml",
            "pricing.batch_discount_percent",
            "pricing.models.\"a\".input",
            "pricing.models.\"a\".output",
            "pricing.models.\"b\".cache_read",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
        assert!(toml::from_str::<PricingConfig>("[models.x]\ninput = 1\noutpt = 2").is_err());
        let cheaper_long: PricingConfig = toml::from_str(
            "[models.x]\ninput = 2\noutput = 2\nlong_context = { above_input_tokens = 5, input = 1, output = 2 }",
        )
        .unwrap();
        let err = PriceTable::from_config(&cheaper_long).unwrap_err();
        assert!(
            err[0].contains("pricing.models.\"x\".long_context"),
            "{err:?}"
        );
    }

    #[test]
    fn a_pricing_file_applies_before_inline_settings() {
        let dir = std::env::temp_dir().join(format!("rampart-pricing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prices.toml");
        std::fs::write(
            &path,
            "[models.\"x\"]\ninput = 1\noutput = 1\n[models.\"y\"]\ninput = 1\noutput = 1\n",
        )
        .unwrap();
        let cfg = PricingConfig {
            file: Some(path.clone()),
            overrides: toml::from_str("[models.\"y\"]\ninput = 2\noutput = 2\n").unwrap(),
        };
        let t = PriceTable::from_config(&cfg).unwrap();
        assert_eq!(t.lookup("x").0.rates.input, 1_000_000);
        assert_eq!(t.lookup("y").0.rates.input, 2_000_000);
        std::fs::write(&path, "[models.\"x\"]\ninput = 1\n").unwrap();
        let err = PriceTable::from_config(&cfg).unwrap_err();
        assert!(err[0].contains("prices.toml"), "{err:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pricing_file_that_is_not_toml_is_not_shown() {
        let dir = std::env::temp_dir().join(format!("rampart-pricing-x-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shadow");
        std::fs::write(&path, "root:$6$c2FsdA$aGFzaA:19000:0:99999:7:::\n").unwrap();
        let cfg = PricingConfig {
            file: Some(path.clone()),
            overrides: PricingOverrides::default(),
        };
        let err = PriceTable::from_config(&cfg).unwrap_err().join("\n");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 1, column "), "{err}");
        for shown in ["root", "$6$", "c2FsdA", "19000"] {
            assert!(!err.contains(shown), "{err}");
        }
        std::fs::write(&path, "[models.\"x\"]\ninput = \"secret\"\noutput = 1\n").unwrap();
        let err = PriceTable::from_config(&cfg).unwrap_err().join("\n");
        assert!(err.contains("line 2, column 9"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn arb_usage() -> impl Strategy<Value = TokenUsage> {
        let n = || prop_oneof![0..2_000_000u64, Just(0u64), any::<u64>()];
        (
            n(),
            n(),
            n(),
            n(),
            proptest::option::of(n()),
            proptest::option::of(n()),
        )
            .prop_map(|(i, o, c, r, c5, c1)| TokenUsage {
                input_tokens: i,
                output_tokens: o,
                cache_creation_input_tokens: c,
                cache_read_input_tokens: r,
                cache_creation_5m: c5,
                cache_creation_1h: c1,
            })
    }

    /// [`arb_usage`] whose input counts, plus a slack under 1,000, sum within a u64 (an estimate
    /// is one: usages past it are out of an estimate's reach). Drawn usages that do not
    /// fit have every count divided by 8 (each then under 2^61: four of them and the slack fit),
    /// so the huge counts stay in the draw instead of being rejected.
    fn arb_usage_within_reach() -> impl Strategy<Value = TokenUsage> {
        arb_usage().prop_map(|u| {
            let (w5, w1) = u.cache_writes();
            let fits = [u.input_tokens, w5, w1, u.cache_read_input_tokens]
                .iter()
                .try_fold(1_000u64, |acc, &n| acc.checked_add(n))
                .is_some();
            if fits {
                return u;
            }
            TokenUsage {
                input_tokens: u.input_tokens >> 3,
                output_tokens: u.output_tokens >> 3,
                cache_creation_input_tokens: u.cache_creation_input_tokens >> 3,
                cache_read_input_tokens: u.cache_read_input_tokens >> 3,
                cache_creation_5m: u.cache_creation_5m.map(|n| n >> 3),
                cache_creation_1h: u.cache_creation_1h.map(|n| n >> 3),
            }
        })
    }

    fn models() -> impl Strategy<Value = String> {
        let ids: Vec<String> = rampart_sim::default_catalogue()
            .into_iter()
            .map(|m| m.id)
            .chain(["unknown-model".to_owned()])
            .collect();
        proptest::sample::select(ids)
    }

    proptest! {
        #[test]
        fn cost_never_panics_and_is_monotonic_in_every_count(
            model in models(), u in arb_usage(), field in 0usize..6, extra in 0..1_000_000u64, batch in any::<bool>()
        ) {
            let t = PriceTable::builtin();
            let base = t.cost(&model, &u, batch);
            let mut more = u;
            match field {
                0 => more.input_tokens = more.input_tokens.saturating_add(extra),
                1 => more.output_tokens = more.output_tokens.saturating_add(extra),
                2 => more.cache_creation_input_tokens = more.cache_creation_input_tokens.saturating_add(extra),
                3 => more.cache_read_input_tokens = more.cache_read_input_tokens.saturating_add(extra),
                4 => more.cache_creation_5m = Some(more.cache_creation_5m.unwrap_or(0).saturating_add(extra)),
                _ => more.cache_creation_1h = Some(more.cache_creation_1h.unwrap_or(0).saturating_add(extra)),
            }
            prop_assert!(t.cost(&model, &more, batch) >= base);
            prop_assert!(t.cost(&model, &u, true) <= t.cost(&model, &u, false));
        }

        #[test]
        fn worst_case_bounds_every_usage_within_the_estimate(
            model in models(), u in arb_usage_within_reach(), slack in 0..1_000u64, batch in any::<bool>()
        ) {
            let t = PriceTable::builtin();
            let estimate = u.total_input().saturating_add(slack);
            let max_out = u.output_tokens.saturating_add(slack);
            prop_assert!(t.cost(&model, &u, batch) <= t.worst_case(&model, estimate, max_out, batch));
        }

        #[test]
        fn worst_case_is_monotonic(
            model in models(), input in any::<u64>(), output in any::<u64>(), d in 0..1_000_000u64
        ) {
            let t = PriceTable::builtin();
            let w = t.worst_case(&model, input, output, false);
            prop_assert!(t.worst_case(&model, input.saturating_add(d), output, false) >= w);
            prop_assert!(t.worst_case(&model, input, output.saturating_add(d), false) >= w);
        }

        #[test]
        fn configured_rates_never_overflow(rate in 0.0..=MAX_RATE_USD_PER_MTOK, tokens in any::<u64>()) {
            let cfg: PricingConfig = toml::from_str(&format!(
                "[models.m]\ninput = {rate:?}\noutput = {rate:?}\ncache_write_1h = {rate:?}"
            )).unwrap();
            let t = PriceTable::from_config(&cfg).unwrap();
            let u = TokenUsage { input_tokens: tokens, output_tokens: tokens, cache_creation_input_tokens: tokens,
                cache_read_input_tokens: tokens, cache_creation_5m: Some(tokens), cache_creation_1h: Some(tokens) };
            let _ = t.cost("m", &u, false);
            let _ = t.worst_case("m", tokens, tokens, true);
        }
    }
}
