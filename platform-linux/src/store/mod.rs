//! The config store: server and client over TCP (SPEC 5). TODO(skeleton).
