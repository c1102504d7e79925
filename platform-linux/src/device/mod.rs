//! Device backends (`sim`, `acl`). TODO(skeleton).
