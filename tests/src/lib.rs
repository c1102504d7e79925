//! Shared helpers of the smem integration tests. TODO(skeleton).
