//! Fuzz entry points. TODO(skeleton).
