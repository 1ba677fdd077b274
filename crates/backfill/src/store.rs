//! Object-store locations (`s3://`, `gs://`, `az://`) for file sources and
//! Parquet/Delta targets, through the `object_store` crate.
//!
//! Credentials, regions and endpoints come from the environment variables
//! each cloud's own tools read, never from the job file: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` (an S3-compatible server) and `AWS_ALLOW_HTTP`;
//! `GOOGLE_SERVICE_ACCOUNT` or `GOOGLE_APPLICATION_CREDENTIALS`;
//! `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` or a SAS
//! token. Messages name the location as written in the job file.

use std::sync::Arc;

use backfill_core::ErrorClass;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use url::Url;

/// One location in an object store.
#[derive(Debug, Clone)]
pub struct Remote {
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://bucket`: the key DataFusion registers the store under.
    pub base: Url,
    /// The location as a directory URL (ends with `/`).
    pub url: Url,
    /// The location's key prefix inside the bucket.
    pub prefix: ObjPath,
    pub shown: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{shown}: {message}")]
    Invalid { shown: String, message: String },
    #[error("{op} {key} in {shown}: {source}")]
    Store {
        op: &'static str,
        key: String,
        shown: String,
        #[source]
        source: Box<object_store::Error>,
    },
}

impl StoreError {
    /// Network and server errors are retried; a wrong bucket, key or
    /// credential is not.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Invalid { .. } => ErrorClass::Permanent,
            StoreError::Store { source, .. } => store_error_class(source),
        }
    }
}

pub fn store_error_class(e: &object_store::Error) -> ErrorClass {
    match e {
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

impl Remote {
    /// Connects nothing yet: builds the client for `text` (one of
    /// [`backfill_core::spec::OBJECT_STORE_SCHEMES`]) from the environment.
    pub fn open(text: &str, shown: &str) -> Result<Remote, StoreError> {
        let invalid = |message: String| StoreError::Invalid {
            shown: shown.to_string(),
            message,
        };
        let mut url = Url::parse(text).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match url.scheme() {
            "s3" | "s3a" => AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
            "gs" => GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
            "az" | "abfs" | "abfss" => MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
            other => {
                return Err(invalid(format!(
                    "\"{other}://\" is not an object store this build supports"
                )));
            }
        };
        let store =
            built.map_err(|e| invalid(format!("cannot configure the object store: {e}")))?;
        let prefix = ObjPath::from_url_path(url.path())
            .map_err(|e| invalid(format!("not a valid object path: {e}")))?;
        let base = Url::parse(&url[..url::Position::BeforePath])
            .map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        Ok(Remote {
            store,
            base,
            url,
            prefix,
            shown: shown.to_string(),
        })
    }

    /// A directory below this location, on the same client.
    pub fn child(&self, name: &str) -> Result<Remote, StoreError> {
        let invalid = |message: String| StoreError::Invalid {
            shown: self.shown.clone(),
            message,
        };
        let url = self
            .url
            .join(&format!("{name}/"))
            .map_err(|e| invalid(e.to_string()))?;
        let prefix = ObjPath::from_url_path(url.path())
            .map_err(|e| invalid(format!("not a valid object path: {e}")))?;
        Ok(Remote {
            store: self.store.clone(),
            base: self.base.clone(),
            url,
            prefix,
            shown: self.shown.clone(),
        })
    }

    /// The key of `rel` (a `/`-separated path below the location), kept
    /// byte for byte: partition directories are already escaped.
    pub fn key(&self, rel: &str) -> Result<ObjPath, StoreError> {
        let full = if self.prefix.as_ref().is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        ObjPath::parse(&full).map_err(|e| StoreError::Invalid {
            shown: self.shown.clone(),
            message: format!("{rel} is not a valid object key: {e}"),
        })
    }

    /// `key` relative to the location, if it is below it.
    pub fn relative<'a>(&self, key: &'a ObjPath) -> Option<&'a str> {
        let k = key.as_ref();
        if self.prefix.as_ref().is_empty() {
            return Some(k);
        }
        k.strip_prefix(self.prefix.as_ref())?.strip_prefix('/')
    }

    pub fn err(
        &self,
        op: &'static str,
        key: &ObjPath,
    ) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        let key = key.to_string();
        move |source| StoreError::Store {
            op,
            key,
            shown: self.shown.clone(),
            source: Box::new(source),
        }
    }

    /// Lets DataFusion read this location's bucket.
    pub fn register(&self, ctx: &datafusion::prelude::SessionContext) {
        ctx.register_object_store(&self.base, self.store.clone());
    }
}

/// A Parquet file in an object store, read by ranges (footer first).
pub struct ObjectFile {
    pub store: Arc<dyn ObjectStore>,
    pub key: ObjPath,
    pub size: u64,
}

impl parquet::arrow::async_reader::AsyncFileReader for ObjectFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            use object_store::ObjectStoreExt;
            self.store
                .get_range(&self.key, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        Box::pin(async move {
            let size = self.size;
            let meta = parquet::file::metadata::ParquetMetaDataReader::new()
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(meta))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_escaped_partition_values() {
        let r = Remote::open("s3://bucket-one/lake/tx", "s3://bucket-one/lake/tx").unwrap();
        assert_eq!(r.base.as_str(), "s3://bucket-one");
        assert_eq!(r.url.as_str(), "s3://bucket-one/lake/tx/");
        assert_eq!(r.prefix.as_ref(), "lake/tx");
        let k = r.key("region=a%2Fb/part-x.parquet").unwrap();
        assert_eq!(k.as_ref(), "lake/tx/region=a%2Fb/part-x.parquet");
        assert_eq!(r.relative(&k), Some("region=a%2Fb/part-x.parquet"));
        assert!(r.key("../x").is_err());
        let staging = r.child("_backfill_staging").unwrap();
        assert_eq!(
            staging.url.as_str(),
            "s3://bucket-one/lake/tx/_backfill_staging/"
        );
        assert_eq!(staging.prefix.as_ref(), "lake/tx/_backfill_staging");
        let other = ObjPath::parse("lake/txx/part.parquet").unwrap();
        assert_eq!(r.relative(&other), None);
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let e = Remote::open("hdfs://nn/x", "hdfs://nn/x").unwrap_err();
        assert!(e.to_string().contains("hdfs://"), "{e}");
    }
}
