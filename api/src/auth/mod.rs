//! Authentication: placeholder
