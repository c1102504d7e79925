//! Fuzz entry points for the GVA allocator, tables and copy validation. TODO(skeleton).
