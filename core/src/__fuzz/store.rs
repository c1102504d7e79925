//! Fuzz entry points for the wire codec and URL parsing. TODO(skeleton).
