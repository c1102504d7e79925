//! Config store wire protocol (SPEC 5). TODO(skeleton).
