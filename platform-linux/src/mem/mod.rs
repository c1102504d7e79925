//! Shareable host segments, GVA reservations, peer mappings. TODO(skeleton).
