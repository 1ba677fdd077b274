//! Delta tables on object stores, opened with this crate's object-store
//! clients.

use super::*;

/// Lets deltalake open `s3://`, `gs://` and `az://` tables with our
/// object-store clients (credentials from the environment, see
/// [`crate::store`]) and its default log store, which commits a version with
/// a conditional put (`If-None-Match`), so two writers never both win.
pub(super) fn register_object_store_schemes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in backfill_core::spec::OBJECT_STORE_SCHEMES {
            let Ok(url) = url::Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            deltalake::logstore::object_store_factories()
                .insert(url.clone(), Arc::new(StoreFactory));
            deltalake::logstore::logstore_factories().insert(url, Arc::new(StoreFactory));
        }
    });
}

pub(super) struct StoreFactory;

impl deltalake::logstore::ObjectStoreFactory for StoreFactory {
    fn parse_url_opts(
        &self,
        url: &url::Url,
        _config: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<(
        deltalake::logstore::ObjectStoreRef,
        object_store::path::Path,
    )> {
        let remote = Remote::open(url.as_str(), url.as_str())
            .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        Ok((remote.store, remote.prefix))
    }
}

impl deltalake::logstore::LogStoreFactory for StoreFactory {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}
