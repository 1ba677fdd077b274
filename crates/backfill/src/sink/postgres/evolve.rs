//! Adding and widening the columns of a PostgreSQL target.

use super::*;

#[async_trait]
impl Evolve for PgSink {
    fn casts_on_insert(&self) -> bool {
        true
    }

    /// `ALTER TABLE ... ADD COLUMN` for added columns and `ALTER COLUMN ...
    /// TYPE` for widened ones, in one transaction.
    async fn evolve(
        &self,
        rows: &arrow::datatypes::SchemaRef,
        diff: &crate::evolve::SchemaDiff,
    ) -> Result<(), SinkError> {
        let _ = rows;
        let inner = &self.inner;
        let mut client = inner.connect().await?;
        if !inner.table_exists(&client, &inner.table.name).await? {
            return Ok(());
        }
        let ty = |name: &str, dt: &arrow::datatypes::DataType| {
            ddl_type(dt).ok_or_else(|| PgError::Column {
                what: format!("evolving {}", inner.table),
                column: name.to_string(),
                reason: format!("{dt} has no PostgreSQL column type"),
            })
        };
        let mut sql = Vec::new();
        for (n, dt) in &diff.added {
            sql.push(format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                inner.table.quoted(),
                quote_ident(n),
                ty(n, dt)?
            ));
        }
        for (n, _, to, c) in &diff.changed {
            if *c == crate::evolve::Change::Widen {
                sql.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {}",
                    inner.table.quoted(),
                    quote_ident(n),
                    ty(n, to)?
                ));
            }
        }
        if sql.is_empty() {
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(PgError::sql(format!("evolving {}", inner.table)))?;
        tx.batch_execute(&sql.join(";\n"))
            .await
            .map_err(PgError::sql(format!("evolving {}", inner.table)))?;
        tx.commit()
            .await
            .map_err(PgError::sql(format!("evolving {}", inner.table)))?;
        Ok(())
    }
}
