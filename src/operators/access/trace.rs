//! Deterministic synthetic workload: tenants with skewed activity, Zipf-distributed
//! keys per table whose hot set jumps to a new place every `drift_every_secs`
//! (staggered per tenant), and a diurnal rate curve. Every second is generated
//! from its own seeded RNG, so any range of seconds can be replayed identically.

use std::ops::Range;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Parameters of a [`ZipfDriftTrace`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceConfig {
    /// Number of tenants (`tenant-000`, ...).
    pub tenants: usize,
    /// The first this many tenants are premium.
    pub premium_tenants: usize,
    /// Tables per tenant (`table-0`, ...); table `i` gets weight `1/(i+1)`.
    pub tables: usize,
    /// Keys per table: keys are `0..keys_per_table`.
    pub keys_per_table: u64,
    /// Zipf exponent of key popularity.
    pub zipf_s: f64,
    /// Zipf exponent of tenant activity (busier tenants are chosen by a seeded shuffle).
    pub tenant_zipf_s: f64,
    /// Mean events per second (before the diurnal factor).
    pub events_per_sec: f64,
    /// The hot key set of each (tenant, table) moves every this many seconds (0: never).
    pub drift_every_secs: u64,
    /// Relative amplitude of the daily rate sine (0..1).
    pub diurnal_amplitude: f64,
    /// Unix time of trace second 0.
    pub start_unix_secs: i64,
    /// Seed of everything random.
    pub seed: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            tenants: 40,
            premium_tenants: 8,
            tables: 2,
            keys_per_table: 100_000,
            zipf_s: 1.1,
            tenant_zipf_s: 1.0,
            events_per_sec: 2000.0,
            drift_every_secs: 180,
            diurnal_amplitude: 0.3,
            start_unix_secs: 1_700_000_000,
            seed: 42,
        }
    }
}

/// One access (read or write) of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Milliseconds since trace start.
    pub t_ms: u64,
    /// Tenant name.
    pub tenant: String,
    /// Table name.
    pub table: String,
    /// Row key.
    pub key: i64,
}

/// Samples ranks `0..n` with probability proportional to `1/(rank+1)^s`.
#[derive(Clone, Debug)]
pub struct ZipfSampler {
    cdf: Vec<f64>,
}

impl ZipfSampler {
    /// Precomputes the cumulative distribution of `n` ranks.
    pub fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|r| {
                acc += (r as f64).powf(-s);
                acc
            })
            .collect();
        if acc > 0.0 && acc.is_finite() {
            cdf.iter_mut().for_each(|c| *c /= acc);
        }
        Self { cdf }
    }

    /// Draws a rank (0 when the sampler is empty).
    pub fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.gen();
        self.cdf
            .partition_point(|&c| c < u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The synthetic trace.
#[derive(Clone, Debug)]
pub struct ZipfDriftTrace {
    config: TraceConfig,
    tenant_names: Vec<String>,
    table_names: Vec<String>,
    tenant_by_activity_rank: Vec<usize>,
    tenant_sampler: ZipfSampler,
    table_sampler: ZipfSampler,
    key_sampler: ZipfSampler,
}

impl ZipfDriftTrace {
    /// Builds the samplers for `config`.
    pub fn new(config: TraceConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut tenant_by_activity_rank: Vec<usize> = (0..config.tenants).collect();
        tenant_by_activity_rank.shuffle(&mut rng);
        Self {
            tenant_names: (0..config.tenants)
                .map(|i| format!("tenant-{i:03}"))
                .collect(),
            table_names: (0..config.tables).map(|i| format!("table-{i}")).collect(),
            tenant_by_activity_rank,
            tenant_sampler: ZipfSampler::new(config.tenants, config.tenant_zipf_s),
            table_sampler: ZipfSampler::new(config.tables, 1.0),
            key_sampler: ZipfSampler::new(
                usize::try_from(config.keys_per_table).unwrap_or(0),
                config.zipf_s,
            ),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TraceConfig {
        &self.config
    }

    /// Tenant names, index order.
    pub fn tenant_names(&self) -> &[String] {
        &self.tenant_names
    }

    /// True for the first `premium_tenants` tenants.
    pub fn is_premium(&self, tenant: &str) -> bool {
        self.tenant_names
            .iter()
            .take(self.config.premium_tenants)
            .any(|t| t == tenant)
    }

    fn rate_at(&self, sec: u64) -> f64 {
        let t = self.config.start_unix_secs as f64 + sec as f64;
        let phase = std::f64::consts::TAU * t / 86_400.0;
        (self.config.events_per_sec * (1.0 + self.config.diurnal_amplitude * phase.sin())).max(0.0)
    }

    /// Rotation of the key ranks of (tenant, table) at `sec`: changes every drift period.
    fn key_offset(&self, tenant: usize, table: usize, sec: u64) -> u64 {
        let keys = self.config.keys_per_table.max(1);
        let drift = self.config.drift_every_secs;
        let salt = splitmix64(self.config.seed ^ ((tenant as u64) << 32) ^ table as u64);
        let epoch = salt
            .checked_rem(drift)
            .and_then(|phase| (sec + phase).checked_div(drift))
            .unwrap_or(0);
        splitmix64(salt ^ epoch.wrapping_mul(0xd6e8_feb8_6659_fd93)) % keys
    }

    /// Events of trace second `sec`, time-ordered.
    pub fn events_in_second(&self, sec: u64) -> Vec<AccessEvent> {
        if self.tenant_names.is_empty()
            || self.table_names.is_empty()
            || self.config.keys_per_table == 0
        {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(splitmix64(self.config.seed ^ splitmix64(sec)));
        let n = (self.rate_at(sec) + rng.gen::<f64>()).floor() as usize;
        let mut offsets: Vec<u64> = (0..n).map(|_| rng.gen_range(0..1000)).collect();
        offsets.sort_unstable();
        let keys = self.config.keys_per_table;
        offsets
            .into_iter()
            .map(|ms| {
                let tenant = self.tenant_by_activity_rank[self.tenant_sampler.sample(&mut rng)];
                let table = self.table_sampler.sample(&mut rng);
                let rank = self.key_sampler.sample(&mut rng) as u64;
                let key = (rank + self.key_offset(tenant, table, sec)) % keys;
                AccessEvent {
                    t_ms: sec * 1000 + ms,
                    tenant: self.tenant_names[tenant].clone(),
                    table: self.table_names[table].clone(),
                    key: i64::try_from(key).unwrap_or(i64::MAX),
                }
            })
            .collect()
    }

    /// Time-ordered events of the seconds in `secs`.
    pub fn events(&self, secs: Range<u64>) -> impl Iterator<Item = AccessEvent> + '_ {
        secs.flat_map(move |sec| self.events_in_second(sec))
    }
}
