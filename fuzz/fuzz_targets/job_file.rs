//! Any bytes as a job file: parsing must return a spec or errors, never
//! panic; a spec's range must plan into chunks that tile it exactly.
#![no_main]

use std::path::Path;

use backfill_core::plan;
use backfill_core::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SET").then(|| "value-from-env".to_string());
    let Ok(spec) = JobSpec::parse(Path::new("fuzz/job.toml"), text, &env) else {
        return;
    };
    // Plans that would be huge are refused by estimate, not built.
    if plan::estimate(spec.range.as_ref()).is_some_and(|n| n > 100_000) {
        return;
    }
    if let Ok(chunks) = plan::plan(&spec.name, spec.range.as_ref()) {
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].hi, pair[1].lo, "chunks must tile the range");
            assert!(pair[0].lo < pair[0].hi);
        }
        if let (Some(r), Some(first), Some(last)) =
            (spec.range.as_ref(), chunks.first(), chunks.last())
        {
            if r.start.is_some() {
                assert_eq!(first.lo, r.start);
                assert_eq!(last.hi, r.end);
            }
        }
    }
});
