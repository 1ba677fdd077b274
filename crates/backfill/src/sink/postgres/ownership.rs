//! The range a job owns in a PostgreSQL table, kept in a comment on it.

use super::*;

#[async_trait]
impl Ownership for PgSink {
    async fn footprint(&self) -> Result<Option<crate::sink::Footprint>, SinkError> {
        if !self.inner.keeps_footprint() {
            return Ok(None);
        }
        let client = self.inner.connect().await?;
        if !self.inner.table_exists(&client, FOOTPRINT).await? {
            return Ok(None);
        }
        let row = client
            .query_opt(
                &format!(
                    "SELECT range FROM {} WHERE target = $1 AND job = $2",
                    self.inner.qualified(FOOTPRINT)
                ),
                &[&self.inner.table.to_string(), &self.inner.job],
            )
            .await
            .map_err(PgError::sql(format!(
                "reading the footprint of {}",
                self.inner.table
            )))?;
        Ok(row.and_then(|r| crate::sink::decode_footprint(r.get(0))))
    }

    async fn set_footprint(&self, range: crate::sink::Footprint) -> Result<(), SinkError> {
        if !self.inner.keeps_footprint() {
            return Ok(());
        }
        *self
            .inner
            .pending_footprint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(range);
        match self.inner.connect_to_table().await? {
            Some(client) => self.inner.write_footprint(&client, range).await,
            // Recorded as the table is created.
            None => Ok(()),
        }
    }
}
