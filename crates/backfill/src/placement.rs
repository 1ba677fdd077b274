//! Which chunk holds each version of a key, for the dedup index.
//!
//! A chunk selects its rows from the source, before the transform, by its
//! predicate ([`predicate::datafusion`]): `lo <= column < hi`, or
//! `column = value` for a partition chunk. The index must place every
//! version in the chunk that will read it, or a chunk keeps a version that
//! another chunk was told is the winner (a key twice) or drops the one it
//! holds (a key gone). So the placement is computed the same way, on the
//! source rows, and carried through the transform as `__bf_c`:
//!
//! - a transform that works row by row (projections, filters, aliases,
//!   sorts) gets the column added to each of its projections: one scan of
//!   the range, as before;
//! - any other transform (aggregates, DISTINCT, windows, joins, unions,
//!   limits, subqueries) gives each chunk its own answer, so the index runs
//!   it once per chunk over that chunk's rows, as the chunk itself will,
//!   with the chunk's number as a literal.
//!
//! [`predicate::datafusion`]: crate::predicate::datafusion

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use arrow::row::{RowConverter, SortField};
use backfill_core::plan::Chunk;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, Projection, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{DataFrame, SessionContext, col, lit};

use crate::predicate::RangeColumn;

/// The chunk number column of the index passes' rows.
pub const CHUNK_COL: &str = "__bf_c";
const CHUNK_OF_UDF: &str = "__bf_chunk_of";

/// How a range value finds its chunk.
#[derive(Debug)]
enum Rule {
    /// Chunks with bounds, in plan order: the planner's raw integers (µs for
    /// times), each chunk's `[lo, hi)`.
    Bounds(Vec<(Option<i64>, Option<i64>)>),
    /// Partition chunks: the row-format bytes of each chunk's value, as the
    /// column's type, to the chunk number.
    Values {
        converter: Arc<RowConverter>,
        data_type: DataType,
        chunks: HashMap<Vec<u8>, u32>,
    },
}

/// `__bf_chunk_of(range column)`: the number (position in the plan) of the
/// chunk whose predicate selects the row, NULL when none does.
/// With `[range] buckets`, chunks come `of` to a window (plan order: window
/// by window): the chunk of a row is `window * of + bucket`, the row's
/// bucket given as the UDF's second argument.
#[derive(Debug)]
pub struct ChunkOfUdf {
    rule: Arc<Rule>,
    buckets: Option<u32>,
    /// Kafka positions: the second argument is the partition column, and a
    /// row's place is `partition * POSITION_BASE + offset`.
    positions: bool,
    signature: Signature,
}

impl PartialEq for ChunkOfUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.rule, &other.rule)
    }
}

impl Eq for ChunkOfUdf {}

impl std::hash::Hash for ChunkOfUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.rule).hash(state);
    }
}

/// A partition column's type without dictionary encoding, which Hive
/// directory columns carry and which does not change equality.
fn plain(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

impl ChunkOfUdf {
    pub fn new(range: &RangeColumn, chunks: &[Chunk]) -> Result<ChunkOfUdf, DataFusionError> {
        let buckets = chunks.first().and_then(|c| c.bucket).map(|b| b.of);
        // Bucketed: place by window, one chunk of each group stands for it.
        let windows: Vec<Chunk>;
        let chunks = match buckets {
            Some(of) => {
                windows = chunks.iter().step_by(of.max(1) as usize).cloned().collect();
                &windows[..]
            }
            None => chunks,
        };
        let rule = if chunks.iter().any(|c| c.value.is_some()) {
            let data_type = plain(&range.data_type);
            let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
            let mut by_value = HashMap::with_capacity(chunks.len());
            for (i, c) in chunks.iter().enumerate() {
                let Some(v) = &c.value else {
                    return Err(DataFusionError::Plan(
                        "a plan mixes partition chunks and ranges".into(),
                    ));
                };
                // Cast as the chunk predicate casts it, so both agree.
                let value = datafusion::common::ScalarValue::Utf8(Some(v.clone()))
                    .cast_to(&data_type)?
                    .to_array()?;
                let rows = converter.convert_columns(&[value])?;
                by_value.insert(rows.row(0).as_ref().to_vec(), i as u32);
            }
            Rule::Values {
                converter: Arc::new(converter),
                data_type,
                chunks: by_value,
            }
        } else {
            Rule::Bounds(
                chunks
                    .iter()
                    .map(|c| (c.lo.map(|v| v.raw()), c.hi.map(|v| v.raw())))
                    .collect(),
            )
        };
        Ok(ChunkOfUdf {
            rule: Arc::new(rule),
            buckets,
            positions: range.position.is_some(),
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }

    /// The columns the UDF takes: the range column, and the bucket column
    /// of a bucketed plan.
    pub fn args(&self, range: &RangeColumn) -> Vec<Expr> {
        let mut args = vec![col(Column::new_unqualified(range.name.clone()))];
        if let (true, Some(p)) = (self.positions, &range.position) {
            args.push(col(Column::new_unqualified(p.clone())));
        }
        if let (Some(_), Some(b)) = (self.buckets, &range.bucket) {
            args.push(col(Column::new_unqualified(b.name.clone())));
        }
        args
    }

    /// Chunks of rows given their range values and, for a bucketed plan,
    /// their bucket column.
    pub(crate) fn chunks_of_rows(
        &self,
        range: &ArrayRef,
        bucket: Option<&ArrayRef>,
    ) -> Result<UInt32Array, DataFusionError> {
        if self.positions {
            let (Some(partition), Rule::Bounds(bounds)) = (bucket, self.rule.as_ref()) else {
                return Err(DataFusionError::Internal(format!(
                    "{CHUNK_OF_UDF} of Kafka offsets takes the offset and the partition"
                )));
            };
            let offsets = positions(range)?;
            let partitions = positions(partition)?;
            return Ok(offsets
                .iter()
                .zip(&partitions)
                .map(|(o, p)| {
                    let place = p.zip(*o).and_then(|(p, o)| {
                        p.checked_mul(backfill_core::plan::POSITION_BASE)?
                            .checked_add(o)
                    })?;
                    chunk_of_position(bounds, place)
                })
                .collect());
        }
        let windows = self.chunks_of(range)?;
        let (Some(of), Some(b)) = (self.buckets, bucket) else {
            return Ok(windows);
        };
        let buckets = crate::bucket::buckets(b, of)?;
        Ok(windows
            .iter()
            .zip(buckets.values().iter())
            .map(|(w, b)| w.map(|w| w * of + b))
            .collect())
    }

    pub(crate) fn chunks_of(&self, a: &ArrayRef) -> Result<UInt32Array, DataFusionError> {
        match self.rule.as_ref() {
            Rule::Bounds(bounds) => {
                let positions = positions(a)?;
                Ok(positions
                    .iter()
                    .map(|p| p.and_then(|p| chunk_of_position(bounds, p)))
                    .collect())
            }
            Rule::Values {
                converter,
                data_type,
                chunks,
            } => {
                let a = cast(a, data_type)?;
                let rows = converter.convert_columns(std::slice::from_ref(&a))?;
                Ok((0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            None
                        } else {
                            chunks.get(rows.row(i).as_ref()).copied()
                        }
                    })
                    .collect())
            }
        }
    }
}

/// The chunk whose `[lo, hi)` holds `pos`: chunks are in plan order, their
/// ranges ascending and disjoint.
fn chunk_of_position(bounds: &[(Option<i64>, Option<i64>)], pos: i64) -> Option<u32> {
    let after = bounds.partition_point(|(lo, _)| lo.is_none_or(|lo| lo <= pos));
    let i = after.checked_sub(1)?;
    let (_, hi) = bounds.get(i)?;
    hi.is_none_or(|hi| pos < hi).then_some(i as u32)
}

/// Range values as the planner's raw integers (µs for times), per row. A
/// value is in `[lo, hi)` exactly when its predicate (bounds rounded up to
/// the column's unit) says so: whole seconds and days convert exactly, and
/// nanoseconds round down (toward minus infinity, also before 1970), since
/// `ns >= lo * 1000` exactly when `floor(ns / 1000) >= lo`.
pub fn positions(a: &ArrayRef) -> Result<Vec<Option<i64>>, DataFusionError> {
    let as_i64 = match a.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            let ns = cast(a, &DataType::Int64)?;
            return Ok(ns
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|ns| ns.div_euclid(1000)))
                .collect());
        }
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let micros = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            cast(&micros, &DataType::Int64)?
        }
        DataType::Dictionary(_, v) => return positions(&cast(a, v)?),
        _ => cast(a, &DataType::Int64)?,
    };
    Ok(as_i64.as_primitive::<Int64Type>().iter().collect())
}

impl ScalarUDFImpl for ChunkOfUdf {
    fn name(&self) -> &str {
        CHUNK_OF_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(a) = arrays.first() else {
            return Err(DataFusionError::Internal(format!(
                "{CHUNK_OF_UDF} takes the range column"
            )));
        };
        Ok(ColumnarValue::Array(Arc::new(
            self.chunks_of_rows(a, arrays.get(1))?,
        )))
    }
}

/// The plan nodes through which a row keeps its identity: each output row
/// comes from one input row of the same chunk, whatever the other rows are.
fn row_by_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::Repartition(_) => true,
        LogicalPlan::Sort(s) => s.fetch.is_none(),
        _ => false,
    }
}

/// The transform's plan with `__bf_c` carried to its output, if the plan
/// works row by row and its source rows carry the column.
fn carry_chunk_column(plan: LogicalPlan) -> Result<Option<LogicalPlan>, DataFusionError> {
    let mut simple = true;
    plan.apply_with_subqueries(|node| {
        if row_by_row(node) && !node.expressions().iter().any(has_subquery) {
            Ok(TreeNodeRecursion::Continue)
        } else {
            simple = false;
            Ok(TreeNodeRecursion::Stop)
        }
    })?;
    if !simple {
        return Ok(None);
    }
    let carried = plan
        .transform_up(|node| {
            let LogicalPlan::Projection(p) = node else {
                return Ok(Transformed::yes(node.recompute_schema()?));
            };
            if has_chunk_column(&p.schema) {
                return Ok(Transformed::no(LogicalPlan::Projection(p)));
            }
            let Some(column) = chunk_column(p.input.schema()) else {
                return Ok(Transformed::no(LogicalPlan::Projection(p)));
            };
            let mut exprs = p.expr.clone();
            exprs.push(Expr::Column(column));
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(exprs, p.input.clone())?,
            )))
        })?
        .data;
    Ok(has_chunk_column(carried.schema()).then_some(carried))
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
        ))
    })
    .unwrap_or(true)
}

fn has_chunk_column(schema: &DFSchema) -> bool {
    schema
        .fields()
        .iter()
        .filter(|f| f.name() == CHUNK_COL)
        .count()
        == 1
}

/// `__bf_c` of a schema, with its qualifier, if it has exactly one.
fn chunk_column(schema: &DFSchema) -> Option<Column> {
    let mut found = schema
        .iter()
        .filter(|(_, f)| f.name() == CHUNK_COL)
        .map(|(q, f)| Column::new(q.cloned(), f.name()));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The transformed rows of the job's range with `__bf_c`, the chunk whose
/// predicate selects each row's source row. `raw` is the source already
/// filtered to the whole range (or not filtered, when every row is in it).
pub async fn transformed_with_chunks(
    ctx: &SessionContext,
    raw: DataFrame,
    transform_sql: &str,
    lookups: &crate::source::Lookups,
    range: &RangeColumn,
    chunks: &[Chunk],
) -> Result<DataFrame, DataFusionError> {
    let place = ChunkOfUdf::new(range, chunks)?;
    let args = place.args(range);
    let udf = ScalarUDF::new_from_impl(place);
    let placed = raw.clone().with_column(CHUNK_COL, udf.call(args))?;
    ctx.register_table("source", placed.into_view())?;
    let transformed = ctx.sql(transform_sql).await?;
    let (state, plan) = transformed.into_parts();
    if let Some(carried) = carry_chunk_column(plan)? {
        return Ok(DataFrame::new(state, carried));
    }
    tracing::info!(
        "dedup index: the transform does not work row by row, so it runs once per chunk ({} chunks)",
        chunks.len()
    );
    let _ = ctx.deregister_table("source")?;
    let mut union: Option<LogicalPlanBuilder> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        // A context of its own, so each chunk has its own `source`.
        let own = SessionContext::new_with_config_rt(ctx.copied_config(), ctx.runtime_env());
        crate::source::register_lookups(&own, lookups)?;
        let mut rows = raw.clone();
        if let Some(pred) = crate::predicate::datafusion(range, chunk)? {
            rows = rows.filter(pred)?;
        }
        own.register_table("source", rows.into_view())?;
        let branch = own
            .sql(transform_sql)
            .await?
            .with_column(CHUNK_COL, lit(i as u32))?
            .into_unoptimized_plan();
        union = Some(match union {
            None => LogicalPlanBuilder::from(branch),
            Some(u) => u.union(branch)?,
        });
    }
    let Some(union) = union else {
        return Err(DataFusionError::Plan("a job with no chunks".into()));
    };
    Ok(DataFrame::new(ctx.state(), union.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampNanosecondArray};
    use backfill_core::RangeValue;

    fn bounded(lo: i64, hi: i64) -> Chunk {
        Chunk {
            index: 0,
            id: String::new(),
            lo: Some(RangeValue::Int(lo)),
            hi: Some(RangeValue::Int(hi)),
            value: None,
            bucket: None,
        }
    }

    #[test]
    fn a_value_finds_the_chunk_whose_bounds_hold_it() {
        let chunks = [bounded(0, 10), bounded(10, 20), bounded(20, 30)];
        let range = RangeColumn {
            name: "n".into(),
            data_type: DataType::Int64,
            bucket: None,
            position: None,
        };
        let udf = ChunkOfUdf::new(&range, &chunks).expect("udf");
        let a: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(-1),
            Some(0),
            Some(9),
            Some(10),
            Some(29),
            Some(30),
            None,
        ]));
        let got: Vec<Option<u32>> = udf.chunks_of(&a).expect("chunks").iter().collect();
        assert_eq!(got, [None, Some(0), Some(0), Some(1), Some(2), None, None]);
    }

    #[test]
    fn nanoseconds_before_1970_round_down_like_the_predicate() {
        // -1 ns is before 0 µs: in the chunk [-1 µs, 0), not in [0, 1 µs).
        let a: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![-1, -1000, -1001, 999]));
        assert_eq!(
            positions(&a).expect("positions"),
            [Some(-1), Some(-1), Some(-2), Some(0)]
        );
    }

    #[test]
    fn partition_values_compare_as_the_columns_type() {
        let chunk = |v: &str| Chunk {
            index: 0,
            id: String::new(),
            lo: None,
            hi: None,
            value: Some(v.into()),
            bucket: None,
        };
        let range = RangeColumn {
            name: "m".into(),
            data_type: DataType::Int32,
            bucket: None,
            position: None,
        };
        let udf = ChunkOfUdf::new(&range, &[chunk("1"), chunk("07")]).expect("udf");
        let a: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![7, 1, 2]));
        let got: Vec<Option<u32>> = udf.chunks_of(&a).expect("chunks").iter().collect();
        assert_eq!(got, [Some(1), Some(0), None]);

        let range = RangeColumn {
            name: "region".into(),
            data_type: DataType::Utf8,
            bucket: None,
            position: None,
        };
        let udf = ChunkOfUdf::new(&range, &[chunk("eu"), chunk("us")]).expect("udf");
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("us"), None, Some("ap")]));
        let got: Vec<Option<u32>> = udf.chunks_of(&a).expect("chunks").iter().collect();
        assert_eq!(got, [Some(1), None, None]);
    }

    #[tokio::test]
    async fn only_a_row_by_row_transform_carries_the_chunk_column() {
        use arrow::datatypes::{Field, Schema};
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("t", DataType::Int64, true),
            Field::new(CHUNK_COL, DataType::UInt32, true),
        ]));
        ctx.register_table(
            "source",
            Arc::new(datafusion::datasource::empty::EmptyTable::new(schema)),
        )
        .expect("register");
        for (sql, carried) in [
            ("SELECT a, t + 1 AS t FROM source WHERE a > 0", true),
            (
                "SELECT * FROM (SELECT a AS b, t FROM source) s ORDER BY b",
                true,
            ),
            ("SELECT s.a FROM source AS s", true),
            ("SELECT DISTINCT a, t FROM source", false),
            ("SELECT a, count(*) AS n FROM source GROUP BY a", false),
            (
                "SELECT a, row_number() OVER (ORDER BY t) AS n FROM source",
                false,
            ),
            ("SELECT a FROM source ORDER BY t LIMIT 3", false),
            (
                "SELECT a FROM source WHERE t > (SELECT avg(t) FROM source)",
                false,
            ),
            ("SELECT x.a FROM source x JOIN source y ON x.a = y.a", false),
            ("SELECT a FROM source UNION ALL SELECT t FROM source", false),
        ] {
            let plan = ctx.sql(sql).await.expect("plan").into_unoptimized_plan();
            let got = carry_chunk_column(plan).expect("rewrite");
            assert_eq!(got.is_some(), carried, "{sql}");
            if let Some(plan) = got {
                let df = DataFrame::new(ctx.state(), plan);
                let fields = df.schema().fields().len();
                df.collect().await.expect("the rewritten plan runs");
                assert!(fields >= 2, "{sql}");
            }
        }
    }
}
