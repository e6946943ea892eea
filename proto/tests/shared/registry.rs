//! The wire types as serde sees them, traced once for the tests that read them: the documentation's tables
//! (`docs.rs`) and the vectors' coverage of every variant (`vectors.rs`).

use quiver_proto::{EventKind, Failure, Reply, Request, RequestBody, RoomFrame, ServerMsg};
use serde::de::DeserializeOwned;
use serde_reflection::{Registry, Tracer, TracerConfig};

fn trace<T: DeserializeOwned>(tracer: &mut Tracer) {
    let name = std::any::type_name::<T>();
    tracer.trace_simple_type::<T>().unwrap_or_else(|e| panic!("tracing {name}: {e}"));
}

/// Every type reachable from the three stream messages. Tracing a type explores only its own variants, so every
/// enum is traced itself: a new nested enum fails `registry()` with `MissingVariants` naming it (add it here).
pub(crate) fn registry() -> Registry {
    let mut tracer = Tracer::new(TracerConfig::default());
    trace::<Request>(&mut tracer);
    trace::<RequestBody>(&mut tracer);
    trace::<ServerMsg>(&mut tracer);
    trace::<Result<Reply, Failure>>(&mut tracer);
    trace::<Reply>(&mut tracer);
    trace::<RoomFrame>(&mut tracer);
    trace::<EventKind>(&mut tracer);
    tracer.registry().unwrap_or_else(|e| panic!("{e}: trace that enum in proto/tests/shared/registry.rs `registry()`"))
}
