//! The demo dataset (`transactions`): deterministic for a seed and a row
//! count, written as 12 monthly Parquet files sorted by `created_at`.
//!
//! Every base row is a pure function of (seed, row index), so months are
//! generated independently and in parallel, and a duplicate can re-create
//! its original wherever that lives.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use backfill_core::interval::{MICROS_PER_DAY, parse_time};
use chrono::{Datelike, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub const DEFAULT_ROWS: u64 = 1_000_000;
pub const DEFAULT_SEED: u64 = 42;
const YEAR: i32 = 2023;
const REGIONS: [&str; 8] = [
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "ap-south",
    "ap-east",
    "sa-east",
    "af-south",
];
const CATEGORIES: [&str; 20] = [
    "groceries",
    "electronics",
    "clothing",
    "books",
    "toys",
    "garden",
    "sports",
    "beauty",
    "health",
    "automotive",
    "music",
    "movies",
    "games",
    "office",
    "pets",
    "jewelry",
    "travel",
    "food",
    "home",
    "tools",
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(
        "{} already holds a demo with {found}; use --force to replace it (this deletes its source, warehouse and state) or choose another --dir",
        dir.display()
    )]
    Different { dir: PathBuf, found: String },
    #[error("--rows must be at least 100")]
    TooFew,
    #[error("a generator thread panicked")]
    WorkerPanicked,
}

/// Written beside the data so a second `demo` on the same directory reuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoManifest {
    pub rows: u64,
    pub seed: u64,
    pub duplicates: u64,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("transaction_id", DataType::Int64, true),
        Field::new("customer_id", DataType::Int64, false),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, false),
    ]))
}

#[derive(Debug, Clone)]
struct Row {
    id: Option<i64>,
    customer: i64,
    created_at: i64,
    amount: Option<f64>,
    status: &'static str,
    region: &'static str,
    category: &'static str,
    bad_email: bool,
}

struct Layout {
    seed: u64,
    base: u64,
    customers: i64,
    /// Micros of each month start, 13 entries (the last is 2024-01-01).
    month_start: [i64; 13],
    /// First base row index of each month, 13 entries.
    month_first: [u64; 13],
}

fn rng_for(seed: u64, stream: u64, i: u64) -> SmallRng {
    // Distinct streams for base rows and duplicates; the multiplier spreads
    // neighbouring indices across the seed space.
    SmallRng::seed_from_u64(seed ^ stream.rotate_left(32) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Layout {
    fn new(rows: u64, seed: u64) -> Layout {
        let dups = rows / 100;
        let base = rows - dups;
        let mut month_start = [0i64; 13];
        let mut days_before = [0u64; 13];
        let mut days = 0u64;
        for m in 0..13 {
            let (y, mo) = if m == 12 {
                (YEAR + 1, 1)
            } else {
                (YEAR, m as u32 + 1)
            };
            let d = NaiveDate::from_ymd_opt(y, mo, 1).unwrap_or_default();
            month_start[m] = parse_time(&d.format("%Y-%m-%d").to_string()).unwrap_or_default();
            days_before[m] = days;
            if m < 12 {
                let next = if mo == 12 {
                    NaiveDate::from_ymd_opt(y + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(y, mo + 1, 1)
                }
                .unwrap_or_default();
                days += (next - d).num_days() as u64;
            }
        }
        let mut month_first = [0u64; 13];
        for m in 0..13 {
            month_first[m] = base * days_before[m] / days;
        }
        Layout {
            seed,
            base,
            customers: (rows / 20).max(1) as i64,
            month_start,
            month_first,
        }
    }

    fn month_of_base(&self, i: u64) -> usize {
        (0..12)
            .rev()
            .find(|&m| self.month_first[m] <= i)
            .unwrap_or(0)
    }

    fn month_of_time(&self, t: i64) -> usize {
        (0..12)
            .rev()
            .find(|&m| self.month_start[m] <= t)
            .unwrap_or(0)
    }

    fn base_row(&self, i: u64) -> Row {
        let mut rng = rng_for(self.seed, 1, i);
        let m = self.month_of_base(i);
        let created_at = rng.random_range(self.month_start[m]..self.month_start[m + 1]);
        let id = (!rng.random_bool(0.0005)).then_some(i as i64 + 1);
        let amount = if rng.random_bool(0.002) {
            None
        } else if rng.random_bool(0.005) {
            Some(-(rng.random_range(0..50_000) as f64) / 100.0)
        } else {
            Some(rng.random_range(100..500_000) as f64 / 100.0)
        };
        let status = if rng.random_bool(0.001) {
            "unknown"
        } else {
            match rng.random_range(0..100) {
                0..80 => "completed",
                80..92 => "pending",
                _ => "failed",
            }
        };
        Row {
            id,
            customer: rng.random_range(1..=self.customers),
            created_at,
            amount,
            status,
            region: REGIONS[rng.random_range(0..REGIONS.len())],
            category: CATEGORIES[rng.random_range(0..CATEGORIES.len())],
            bad_email: rng.random_bool(0.003),
        }
    }

    /// A later re-emission of an earlier row: same id, later time, maybe
    /// another amount; some land in a later week or month.
    fn duplicate(&self, j: u64) -> Row {
        let mut rng = rng_for(self.seed, 2, j);
        let original = rng.random_range(0..self.base);
        let mut row = self.base_row(original);
        let hour = 3_600_000_000i64;
        let delay = match rng.random_range(0..100) {
            0..55 => rng.random_range(1..6 * hour),
            55..80 => rng.random_range(MICROS_PER_DAY..7 * MICROS_PER_DAY),
            _ => rng.random_range(7 * MICROS_PER_DAY..45 * MICROS_PER_DAY),
        };
        let end = self.month_start[12];
        row.created_at = if row.created_at + delay < end {
            row.created_at + delay
        } else {
            row.created_at + (end - row.created_at) / 2
        };
        if rng.random_bool(0.5) {
            row.amount = Some(rng.random_range(100..500_000) as f64 / 100.0);
        }
        row
    }
}

fn batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.id).collect::<Int64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.customer))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.created_at))
                .collect::<TimestampMicrosecondArray>(),
        ),
        Arc::new(rows.iter().map(|r| r.amount).collect::<Float64Array>()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.region))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.category),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| {
            if r.bad_email {
                format!("customer{}.example.com", r.customer)
            } else {
                format!("customer{}@example.com", r.customer)
            }
        }))),
    ];
    RecordBatch::try_new(schema.clone(), cols)
}

/// Generates the dataset into `dir` (12 files `transactions-2023-MM.parquet`).
pub fn generate(dir: &Path, rows: u64, seed: u64) -> Result<DemoManifest, DemoError> {
    if rows < 100 {
        return Err(DemoError::TooFew);
    }
    std::fs::create_dir_all(dir).map_err(|source| DemoError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let layout = Layout::new(rows, seed);
    let dups = rows - layout.base;
    let mut dup_months: Vec<Vec<u64>> = vec![Vec::new(); 12];
    for j in 0..dups {
        let r = layout.duplicate(j);
        dup_months[layout.month_of_time(r.created_at)].push(j);
    }
    let schema = schema();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(12);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<(), DemoError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<(), DemoError> {
                    loop {
                        let m = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if m >= 12 {
                            return Ok(());
                        }
                        write_month(dir, &layout, &schema, m, &dup_months[m])?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(DemoError::WorkerPanicked)))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(DemoManifest {
        rows,
        seed,
        duplicates: dups,
    })
}

fn write_month(
    dir: &Path,
    layout: &Layout,
    schema: &SchemaRef,
    m: usize,
    dups: &[u64],
) -> Result<(), DemoError> {
    let mut rows: Vec<Row> = (layout.month_first[m]..layout.month_first[m + 1])
        .map(|i| layout.base_row(i))
        .collect();
    rows.extend(dups.iter().map(|&j| layout.duplicate(j)));
    rows.sort_by_key(|r| (r.created_at, r.id));
    let date = NaiveDate::from_ymd_opt(YEAR, m as u32 + 1, 1).unwrap_or_default();
    let path = dir.join(format!(
        "transactions-{}-{:02}.parquet",
        date.year(),
        date.month()
    ));
    let tmp = dir.join(format!(".{}.tmp", m));
    let file = File::create(&tmp).map_err(|source| DemoError::Io {
        path: tmp.clone(),
        source,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let pq = |source| DemoError::Parquet {
        path: path.clone(),
        source,
    };
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq)?;
    for part in rows.chunks(64 * 1024) {
        writer.write(&batch(schema, part)?).map_err(pq)?;
    }
    writer.close().map_err(pq)?;
    std::fs::rename(&tmp, &path).map_err(|source| DemoError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(())
}
