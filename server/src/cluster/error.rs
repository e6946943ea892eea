//! Why the broker cannot be used ([`BrokerError`], at start) or cannot answer a request now ([`Unreachable`], which
//! clients get as `Unavailable`).

/// The broker cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL is not a Redis URL.
    #[error("broker URL {url}: {source}")]
    Url {
        /// The URL, its password redacted.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// Why a request could not be made at the broker (the reason clients get with `Unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// Redis answered with an error, or not in time, or the connection is down.
    #[error("the broker (Redis) is unavailable: {0}; retry later (a post with the same client_msg_id)")]
    Request(#[from] redis::RedisError),
    /// There is no Pub/Sub connection now (it is being made again).
    #[error("the broker (Redis) is unavailable: no Pub/Sub connection; retry later")]
    NoPubSub,
    /// Redis did not confirm a subscription within the request timeout.
    #[error("the broker did not confirm a subscription in time; retry later")]
    Timeout,
}

impl From<Unreachable> for quiver_proto::Failure {
    fn from(unreachable: Unreachable) -> Self {
        quiver_proto::Failure::new(quiver_proto::ErrorCode::Unavailable, unreachable.to_string())
    }
}
