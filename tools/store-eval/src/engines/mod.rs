pub mod fjall_store;
pub mod redb_store;
pub mod sqlite_store;
