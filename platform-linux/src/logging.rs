//! Process-wide logger behind the `log` facade. TODO(skeleton).
