//! Control thread (in progress)
