//! `bifrost serve`: bind, open the store and its consumer groups, serve until SIGTERM or
//! SIGINT, close the groups and the store.

use std::sync::Arc;

use anyhow::Context;
use bifrost_core::DurableStore;
use bifrost_core::group::GroupEngine;
use tokio::net::TcpListener;
use tracing::Level;

use crate::config::Settings;
use crate::store::StoreSpec;

pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    // Bind before opening the store: a busy port should not create a data directory.
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr().context("the listening socket has no address")?;

    // The bus first: an unreachable broker stops the start before the store opens. Its
    // namespace is the schema, the cluster's name on a shared broker.
    let mut postgres = settings.postgres_options();
    postgres.bus = settings
        .cluster_bus
        .connect(&settings.pg_schema)
        .await
        .with_context(|| format!("cannot connect the cluster bus {}", settings.cluster_bus))?;
    let opened = settings.store.open(settings.durability, postgres, settings.redis_options()).await?;
    let store = opened.store;
    match &settings.store {
        StoreSpec::Postgres(_) => {
            tracing::info!(
                store = %settings.store,
                schema = %settings.pg_schema,
                bus = %settings.cluster_bus,
                "store open"
            );
        }
        StoreSpec::Redis(_) => {
            // Acknowledged once Redis has it: durable only if Redis fsyncs every write.
            let durability = if opened.durable { "full" } else { "relaxed" };
            tracing::info!(store = %settings.store, prefix = %settings.redis_prefix, durability = %durability, bus = %"redis", "store open");
            if !opened.durable {
                tracing::warn!(
                    "Redis is not configured with appendonly yes and appendfsync always: an acknowledged \
                     append can be lost if the Redis server crashes"
                );
            }
        }
        _ => tracing::info!(store = %settings.store, durability = %settings.durability, "store open"),
    }
    // The groups start from their stored cursors before the first request can reach them.
    let groups = open_groups(&store).await?;
    let webhooks =
        match bifrost_webhooks::Webhooks::open(Arc::clone(&store), settings.webhook_settings()?).await {
            Ok(webhooks) => webhooks,
            Err(e) => {
                let _ = groups.close().await;
                let _ = store.close().await;
                return Err(anyhow::Error::from(e).context("cannot start webhooks"));
            }
        };

    let metrics = match bifrost_server::install_metrics_recorder() {
        Ok(handle) => {
            bifrost_server::set_store_durable(opened.durable);
            Some(handle)
        }
        Err(e) => {
            tracing::warn!("metrics are disabled: {e}");
            None
        }
    };

    let auth = &settings.auth;
    if auth.is_on() {
        let mut how = Vec::new();
        if auth.admin_key.is_some() {
            how.push("admin key");
        }
        if auth.jwt.key != bifrost_server::JwtKey::None {
            how.push("JWT");
        }
        how.push("API keys");
        announce(&format!("bifrost auth=on ({})", how.join(", ")));
    } else {
        announce("bifrost auth=off (open, single-user dev mode)");
    }
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    announce(&format!("bifrost listening on {scheme}://{addr}"));
    bifrost_server::serve(
        listener,
        store,
        groups,
        Some(webhooks),
        settings.server_config(),
        metrics,
        bifrost_server::shutdown_signal(),
    )
    .await
    .context("the server stopped with an error")?;
    tracing::info!("bifrost stopped");
    Ok(())
}

/// Starts the store's consumer groups from their stored cursors; when they cannot start,
/// closes the store (it may own the data directory's lock) before failing.
pub(crate) async fn open_groups(store: &Arc<dyn DurableStore>) -> anyhow::Result<Arc<dyn GroupEngine>> {
    match bifrost_bus::groups::open(Arc::clone(store)).await {
        Ok(groups) => Ok(groups),
        Err(e) => {
            let _ = store.close().await;
            Err(anyhow::Error::from(e).context("cannot start the consumer groups"))
        }
    }
}

/// The one line scripts wait for: through the log when it shows `info`, else on stderr
/// directly, so that it appears whatever the log filter.
fn announce(line: &str) {
    if tracing::enabled!(Level::INFO) {
        tracing::info!("{line}");
    } else {
        eprintln!("{line}");
    }
}
