//! The test database: where it is, and a schema of its own per test.

use bifrost_core::testkit::service_unavailable;

/// `BIFROST_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn url() -> String {
    std::env::var("BIFROST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// A schema no other test run uses, dropped when the test ends (also when it panicked).
pub struct Schema {
    pub name: String,
}

impl Schema {
    /// `None` (skip) when PostgreSQL is unreachable. Dropping a schema that does not exist
    /// yet is the cheapest question the database can answer.
    pub fn fresh() -> Option<Schema> {
        let name = format!("bifrost_test_{}", uuid::Uuid::new_v4().simple());
        match block_on(bifrost_postgres::drop_schema(&url(), &name)) {
            Ok(()) => Some(Schema { name }),
            Err(e) => service_unavailable("PostgreSQL", e),
        }
    }

    /// The `serve` flags of a node on this schema.
    pub fn serve_args(&self) -> [String; 4] {
        ["--store".into(), url(), "--pg-schema".into(), self.name.clone()]
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = block_on(bifrost_postgres::drop_schema(&url(), &self.name));
    }
}
