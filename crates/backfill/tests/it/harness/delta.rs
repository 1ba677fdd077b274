//! Pointing the demo job at a Delta table, and where that table is.

use super::*;

/// Where [`target_to_delta`] puts the table.
pub fn delta_path(demo: &Demo) -> String {
    demo.path()
        .join("warehouse/transactions_delta")
        .display()
        .to_string()
}

/// Points the demo job's target at a Delta table.
pub fn target_to_delta(demo: &Demo) {
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"\npath = \"warehouse/transactions\"",
            "format = \"delta\"\nmode = \"replace\"\npath = \"warehouse/transactions_delta\"",
        )
    });
}
