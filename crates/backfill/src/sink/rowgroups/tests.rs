use super::*;
use crate::sink::checksum::ChecksumVersion;
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn batch(schema: &SchemaRef, from: i64, rows: i64) -> RecordBatch {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(from..from + rows));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        (from..from + rows).map(|i| format!("name-{i}-{}", i * 7919 % 1000)),
    ));
    let amounts: ArrayRef = Arc::new(Float64Array::from_iter(
        (from..from + rows).map(|i| (i % 11 != 0).then_some(i as f64 / 3.0)),
    ));
    RecordBatch::try_new(schema.clone(), vec![ids, names, amounts]).unwrap()
}

/// Enough rows for several row groups per file, so that the helper has
/// columns to encode after the first one; files are fed interleaved.
#[test]
fn files_keep_every_row_in_order_and_the_checksum_matches() {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let checksum = Arc::new(RowChecksum::new(ChecksumVersion::CURRENT, &schema).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut w = RowGroupWriter::new(
        runtime.handle().clone(),
        schema.clone(),
        Some(checksum.clone()),
    );
    let seeds = [11u64, 22];
    let mut paths = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let path = dir.path().join(format!("{i}.parquet"));
        let file = File::create(&path).unwrap();
        w.open(file, path.clone(), WriterProperties::default(), *seed)
            .unwrap();
        paths.push(path);
    }
    let (per_batch, batches) = (10_000i64, 30);
    let mut expected = 0u64;
    for b in 0..batches {
        for (f, seed) in seeds.iter().enumerate() {
            let rows = batch(&schema, (f as i64) * 1_000_000 + b * per_batch, per_batch);
            expected = expected.wrapping_add(checksum.rows(&rows, *seed).unwrap());
            w.write(f, rows).unwrap();
        }
    }
    let assigned_to_helper = w.on_helper.iter().filter(|&&h| h).count();
    let (files, sum) = w.finish().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(sum, expected);
    assert!(assigned_to_helper > 0, "the helper never got a column");
    for (f, path) in paths.iter().enumerate() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut next = (f as i64) * 1_000_000;
        for read in reader {
            let read = read.unwrap();
            let want = batch(&schema, next, read.num_rows() as i64);
            assert_eq!(read, want, "file {f} at row {next}");
            next += read.num_rows() as i64;
        }
        assert_eq!(next - (f as i64) * 1_000_000, per_batch * batches);
    }
}
